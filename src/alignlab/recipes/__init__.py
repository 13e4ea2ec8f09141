"""Recipes wire data, models, step functions and the shared loop together; each stays short.

`sft` (supervised fine-tuning), `pretrain` (tokenizer + small Llama from scratch). The CLI commands
live in `recipes.commands`; import a recipe module only when you run it (they import torch lazily).
"""
