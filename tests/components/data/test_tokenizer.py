from transformers import AutoTokenizer

from components.data.tokenizer import TokenizerConfig, train_bpe_tokenizer

TEXTS = [
    f"a {size} {colour} {shape} at the {pos} on a gray background"
    for size in ("small", "large") for colour in ("red", "blue", "green") for shape in ("circle", "square")
    for pos in ("top left", "center", "bottom right")
]


def test_trained_tokenizer_loads_with_autotokenizer(tmp_path):
    out = train_bpe_tokenizer(TEXTS * 3, TokenizerConfig(vocab_size=400, min_frequency=1), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("a small red circle at the top left")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a small red circle at the top left"
    # merges were learned from the corpus: frequent words are single tokens
    assert len(tok.tokenize(" circle")) == 1
    assert tok.pad_token == "<pad>" and tok.model_max_length == 512
    batch = tok(["red", "a large blue square"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"] == tok.pad_token_id).any()
