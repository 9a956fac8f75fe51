"""Every `genops ...` command the README names exists, with the options it shows.

A command is read from the README's code blocks (one per line, `\\` continuations joined, `#`
comments dropped) and from its inline code spans. Its command path is the leading words that name
subcommands: a word after a group must be one of the group's subcommands, so a misspelt or planned
command fails; words after a command are its arguments (`genops sample sd_base`: `sd_base` is
an argument of `sample`), and placeholders (`<name>`, `{a,b}`, `PATH`) end the path. Each path must
answer `--help` with exit code 0, and every `--option` written after it must be one of its options.
"""

import re
import shlex
from pathlib import Path

import typer
from typer.testing import CliRunner

from orchestration.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`(genops(?: [^`\n]*)?)`(?!`)")
WORD = re.compile(r"[a-z][a-z0-9_-]*")


def readme_commands(text: str) -> list[str]:
    """The `genops ...` command lines of a markdown text, in order of appearance."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("genops ") or line == "genops":
                commands.append(line)
    prose = FENCE.sub("", text)
    commands.extend(INLINE.findall(prose))
    return commands


def tokens(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def check_command(command: str, root, runner: CliRunner) -> list[str]:
    """Problems with one README command line (empty list: it exists as written)."""
    words = tokens(command)[1:]
    cmd, path = root, []
    for word in words:
        subcommands = getattr(cmd, "commands", None)  # a group (typer vendors its own click: no isinstance)
        if subcommands is None or not WORD.fullmatch(word):
            break
        if word not in subcommands:
            parent = " ".join(["genops", *path])
            return [(f"`{command}`: `genops {' '.join([*path, word])}` is not a command "
                     f"(`{parent}` has: {', '.join(sorted(subcommands))})")]
        path.append(word)
        cmd = subcommands[word]
    problems = []
    result = runner.invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        problems.append(f"`{command}`: `genops {' '.join(path)} --help` exited {result.exit_code}: {result.output[-500:]}")
    known = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        option = word.strip("[]").split("=", 1)[0]
        if option.startswith("--") and option not in known:
            problems.append(f"`{command}`: `genops {' '.join(path)}` has no option {option} "
                            f"(it has: {', '.join(sorted(known))})")
    return problems


def check_text(text: str) -> tuple[list[str], list[str]]:
    root = typer.main.get_command(app)
    runner = CliRunner()
    commands = readme_commands(text)
    return commands, [problem for command in commands for problem in check_command(command, root, runner)]


def test_every_genops_command_in_the_readme_exists():
    commands, problems = check_text(README.read_text())
    paths = {" ".join(tokens(c)[:3]) for c in commands}
    # the parser still finds the README's commands, in code blocks and inline
    assert {"genops data ingest", "genops metrics fid", "genops kernels selftest", "genops ui"} <= paths, paths
    assert not problems, "\n".join(problems)


def test_a_command_the_cli_lacks_is_caught():
    text = (
        "Run `genops sampel sd_base --prompt x` or:\n\n```bash\n"
        "genops data ingest --format cc3m \\\n    --src corpus --out out --no-such-flag\n"
        "genops metrics fid a/ b/ --inception-weights w.pth   # a comment --bogus\n"
        "genops kernels selftest [--json]\n```\n"
    )
    commands, problems = check_text(text)
    assert len(commands) == 4
    assert len(problems) == 2, problems
    assert "`genops sampel` is not a command" in problems[1]
    assert "has no option --no-such-flag" in problems[0]
