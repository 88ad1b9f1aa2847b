"""Edit operators: edit plans, reversible in-place weight edits, safetensors checkpoints."""
