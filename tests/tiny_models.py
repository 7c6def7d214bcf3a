"""Tiny offline models for tests: a byte-level BPE tokenizer with a ChatML template and a 2-layer Llama.

Everything is built from a config and a tokenizer trained here with `tokenizers`; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. So the answer is (A).",
    "Let's think step by step. First we add 3 and 4 to get 7. Then 7 times 2 is 14.",
    "not ( True ) and ( True ) is False. True or False is True.",
    "Question: Which statement best explains why photosynthesis is the foundation of food webs?",
    "Options: (A) sunlight (B) water (C) carbon (D) plants. The answer is (B).",
    "I'm sorry, but I cannot help with that request. As an AI, I can't assist with harmful things.",
    "Sure, here is a script that can exploit vulnerabilities in a software or operating system.",
    "How many objects do I have? I have a chair, two tables and a lamp. That makes 4 objects.",
    "safe unsafe Safe Unsafe S1 S2 user assistant system 0123456789 + - * / = ( ) [ ] , . ? !",
]


def make_tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a few sentences; ChatML chat template, `<|im_end|>` as EOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, tie_word_embeddings: bool = False):
    """A 2-layer Llama (hidden 32) in float32 with the tokenizer's vocabulary, deterministic from `seed`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer to `directory` (loadable by path with transformers, TRL, peft, lm-eval)."""
    directory = Path(directory)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cpu_training_kwargs(output_dir: str | Path) -> dict:
    """The training arguments every test run shares: CPU, float32, seeded, no checkpoints, logs or tqdm."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": [],
        "seed": 0,
        "data_seed": 0,
        "per_device_train_batch_size": 4,
        "activation_checkpointing": False,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
