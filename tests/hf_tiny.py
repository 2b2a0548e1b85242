"""A tiny tokenizer and model for the Hugging Face tests: built here, nothing downloaded.

The tokenizer is character-level (one token per printable character) with
ChatML's two special tokens and a ChatML chat template, so text and
conversational data both run; ``<|im_end|>`` is its EOS, as in SmolLM2.
"""

import string

import torch

import transformers
import tokenizers

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(chat: bool = True):
    """Character-level fast tokenizer; EOS ``<|im_end|>``, pad ``<pad>``, BOS ``<s>`` (added only without chat)."""
    vocab = {"<pad>": 0, "<s>": 1, "<|im_end|>": 2, "<unk>": 3, "<|im_start|>": 4}
    for ch in string.ascii_letters + string.digits + string.punctuation + " \n":
        vocab.setdefault(ch, len(vocab))
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.add_special_tokens(["<pad>", "<s>", "<|im_end|>", "<unk>", "<|im_start|>"])
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tk.decoder = tokenizers.decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                               eos_token="<|im_end|>", unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size, seed=0, layers=2):
    """A random 2-layer Llama (hidden 32) in float32."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config)


BINARY = [
    {"prompt": "Q: hi? A:", "completion": " hello there", "label": True},
    {"prompt": "Q: how are you? A:", "completion": " go away", "label": False},
    {"prompt": "Q: bye? A:", "completion": " see you soon, friend", "label": True},
    {"prompt": "Q: food? A:", "completion": " no", "label": False},
]
PAIRS = [
    {"prompt": "Q: hi? A:", "chosen": " hello there", "rejected": " go away"},
    {"prompt": "Q: how are you? A:", "chosen": " fine", "rejected": " none of your business"},
    {"prompt": "Q: bye? A:", "chosen": " see you soon, friend", "rejected": " bye"},
    {"prompt": "Q: food? A:", "chosen": " yes please", "rejected": " no"},
]


def conversational(rows):
    """The same rows in TRL's conversational form."""
    out = []
    for row in rows:
        new = {"prompt": [{"role": "user", "content": row["prompt"]}]}
        for key in ("completion", "chosen", "rejected"):
            if key in row:
                new[key] = [{"role": "assistant", "content": row[key].strip()}]
        if "label" in row:
            new["label"] = row["label"]
        out.append(new)
    return out


def training_args(config_cls, tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                   report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3, seed=0,
                   disable_tqdm=True, backend="reference")
    options.update(overrides)
    return config_cls(**options)
