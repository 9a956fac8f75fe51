"""One recipe per (model, stage): setup / train / save / cleanup written out, run by the launcher."""
