"""pocketgpt.vla: a vision-language-action slice. The same transformer reads an image cut into patches and an
instruction, and emits an action token (BabyAI grid tasks from minigrid, the `vla` extra); plus the FAST
action tokenizer (pocketgpt.vla.fast)."""
