"""A tiny random causal LM and a small tokenizer, built offline in about a second.

Tests and ``python -m bench.model`` use it to exercise the real loading, batching, streaming
and cancel paths without downloading anything: a byte-level BPE tokenizer trained on the text
below (so every string round-trips), a ChatML chat template like SmolLM2's, and a
``LlamaConfig`` model (hidden 64, 2 layers) with seeded random weights, saved the same way a
Hugging Face model directory is (``config.json``, ``model.safetensors``, tokenizer files).
Its output is gibberish; only its code paths are real.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = """\
Interlace is a gateway that lets agents speak to each other over many protocols.
A model worker loads a small language model and answers questions with streamed tokens.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Summarise the following text in one sentence. Translate English text to French.
What are the primary colors? Red, blue and yellow are the primary colors of paint.
Hello! How can I help you today? Please write a short poem about the sea and the sky.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation: ; . , ! ? ' " ( ) [ ] { } - + * / = _
Unicode: café, naïve, Größe, 東京, ✓ and emoji 🙂 must round-trip through the tokenizer.
"""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_model(
    path: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, vocab_size: int = 512
) -> Path:
    """Write a tiny random Llama model directory at ``path`` and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
