"""A tiny, randomly initialised SmolVLM-family (Idefics3) model saved to a folder, for tests.

Nothing is downloaded: the tokenizer is trained here on a few lines, the weights are random.
``teach`` fine-tunes it for a few seconds until greedy decoding repeats one answer, so the
happy path of a backend is exercised by a real model, not an imitation.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<image>", "<fake_token_around_image>",
           "<global-img>", "<end_of_utterance>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")

# One thread: a model this small gains nothing from more, and OpenMP workers spinning for cores
# that another job holds made ``teach`` take over 300 s instead of 10 on a busy 2-core machine.
torch.set_num_threads(1)


def build(folder: Path, corpus: list[str]) -> Path:
    """Save a tiny Idefics3 model + processor whose tokenizer was trained on ``corpus``."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus * 20, trainers.BpeTrainer(
        vocab_size=1500, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[3:]})
    fast.chat_template = CHAT_TEMPLATE
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=fast,
                                  image_seq_len=4, chat_template=CHAT_TEMPLATE)
    vocab = len(fast)
    config = Idefics3Config(
        vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                           num_attention_heads=2, image_size=64, patch_size=16),
        text_config=dict(model_type="llama", hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=vocab, max_position_embeddings=4096, head_dim=64),
        scale_factor=2, image_token_id=fast.convert_tokens_to_ids("<image>"), vocab_size=vocab)
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def teach(folder: Path, prompts: list[dict], answer: str, steps: int = 400) -> None:
    """Fine-tune the saved model until it answers ``answer`` after each of ``prompts``.

    ``prompts`` are processor outputs; several make the answer hold for unseen frames too.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    target = processor.tokenizer(answer + "<end_of_utterance>", add_special_tokens=False,
                                 return_tensors="pt")["input_ids"]
    batches = []
    for prompt in prompts:
        input_ids = torch.cat([prompt["input_ids"], target], dim=1)
        labels = torch.full_like(input_ids, -100)
        labels[:, -target.shape[1]:] = target
        batches.append(dict(prompt, input_ids=input_ids, labels=labels,
                            attention_mask=torch.ones_like(input_ids)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step >= len(batches) and loss.item() < 0.005:
            break
    model.save_pretrained(folder)
