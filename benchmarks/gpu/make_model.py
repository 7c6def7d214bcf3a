"""Write a randomly initialised Qwen2.5-1.5B-shaped causal LM and a byte-level ChatML tokenizer to a folder.

No hub access: the config is written here (Qwen2.5-1.5B-Instruct's published shapes), the weights are random
(seeded), and the tokenizer maps every UTF-8 byte to one token (256 tokens plus the ChatML specials), so a
1000-character row is about 1000 tokens. The vocabulary of the model stays Qwen's 151 936 rows, so the LM head
costs what it costs in the real model. ``--tiny`` writes a 2-layer model of the same kind for a CPU dry run.

    python benchmarks/gpu/make_model.py /tmp/qwen2.5-1.5b-random            # bf16 on CUDA
    python benchmarks/gpu/make_model.py /tmp/tiny-random --tiny             # float32, CPU dry run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25_15B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TINY = {
    **QWEN25_15B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 0-255) plus <|endoftext|>, <|im_start|>, <|im_end|>; ChatML template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocabulary = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    fast.add_special_tokens(
        {
            "pad_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "additional_special_tokens": ["<|im_start|>"],
        }
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    tokenizer = byte_tokenizer()
    config = Qwen2Config(
        **(TINY if args.tiny else QWEN25_15B),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    on_gpu = torch.cuda.is_available() and not args.tiny
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(
        f"wrote {args.output}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {model.dtype}"
    )


if __name__ == "__main__":
    main()
