"""Backbone loading (local folders, embedded MiniLM, scratch Llama) and the labelled-positions loss.

The tiny-model builders here are also imported by the other backbone test files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ttds.backbone import (
    BackboneConfig,
    LoraSettings,
    PromptCollator,
    add_id_tokens,
    apply_lora,
    backbone_config_from_dict,
    causal_lm_loss,
    load_backbone,
)
from ttds.backbone.lm import resolve_dtype

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "backbone"
ID_TOKENS = ["<a_3>", "<a_12>", "<b_1>", "<b_4>", "<c_7>", "<d_0>", "<ua_3>", "<ub_1>"]
TRAINING_TEXT = [
    "the user bought these items before, in this order",
    "which item comes next? answer with its id:",
    "a user with a long history of small purchases",
    "title brand category description of an item",
]


def build_bpe_tokenizer(with_bos: bool) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (about 300 tokens) on a few sentences; with_bos prepends <|bos|> like Llama."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>", "<|bos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    if with_bos:
        bos = tokenizer.token_to_id("<|bos|>")
        tokenizer.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|eos|>", bos_token="<|bos|>" if with_bos else None)


def tiny_model(model_type: str, vocab_size: int, tie: bool = False, seed: int = 0):
    """Build a randomly initialised causal LM of the given family with hidden size 32 and 2 layers."""
    torch.manual_seed(seed)
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "tie_word_embeddings": tie,
    }
    if model_type == "llama":
        return LlamaForCausalLM(LlamaConfig(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128, **common))
    if model_type == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128, **common))
    if model_type == "qwen3":
        return Qwen3ForCausalLM(
            Qwen3Config(intermediate_size=64, num_key_value_heads=2, head_dim=8, max_position_embeddings=128, **common)
        )
    if model_type == "mistral":
        return MistralForCausalLM(
            MistralConfig(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=128, **common)
        )
    if model_type == "gpt2":
        sizes = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True, **sizes)
        )
    raise ValueError(f"no tiny builder for {model_type}")


def save_tiny_folder(folder: Path, model_type: str, seed: int = 0) -> Path:
    """Write a tiny random model and a BPE tokenizer to ``folder``, as a downloaded checkpoint would look."""
    tokenizer = build_bpe_tokenizer(with_bos=model_type == "llama")
    model = tiny_model(model_type, len(tokenizer), seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_one_step(model, tokenizer, max_length: int = 64) -> float:
    collator = PromptCollator(tokenizer, max_length)
    batch = collator([("the user bought <a_12><b_1> then", "<a_3><b_4>"), ("which item comes next?", "<a_12><b_1><c_7>")])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = causal_lm_loss(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_local_folder_loads_and_trains(tmp_path, model_type):
    folder = save_tiny_folder(tmp_path / model_type, model_type)
    cfg = BackboneConfig(kind="local-hf", path=str(folder), max_length=128, lora=LoraSettings(rank=4))
    model, tokenizer = load_backbone(cfg, "cpu")

    assert model.config.model_type == model_type
    assert tokenizer.pad_token_id is not None

    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    peft_model = apply_lora(model, tokenizer, cfg.lora, ids)
    lora_b = next(p for name, p in peft_model.named_parameters() if "lora_B" in name)
    assert torch.count_nonzero(lora_b) == 0

    loss = train_one_step(peft_model, tokenizer)

    assert torch.isfinite(torch.tensor(loss))
    assert torch.count_nonzero(lora_b) > 0


def test_local_folder_without_config_raises(tmp_path):
    cfg = BackboneConfig(kind="local-hf", path=str(tmp_path))
    with pytest.raises(ValueError, match="has no config.json"):
        load_backbone(cfg, "cpu")


def test_embedded_minilm_loads_as_decoder():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")

    assert isinstance(model, BertLMHeadModel)
    assert model.config.is_decoder
    assert tokenizer.eos_token == "[SEP]"
    assert tokenizer.bos_token == "[CLS]"
    assert tokenizer.pad_token == "[PAD]"


def test_embedded_minilm_is_causal():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    model.eval()
    first = tokenizer("the user bought a red lamp", return_tensors="pt")
    second = tokenizer("the user bought a blue chair", return_tensors="pt")
    assert first.input_ids.shape == second.input_ids.shape

    with torch.no_grad():
        logits_first = model(**first).logits
        logits_second = model(**second).logits

    shared = 5  # [CLS] the user bought a
    assert torch.allclose(logits_first[:, :shared], logits_second[:, :shared], atol=1e-5)
    assert not torch.allclose(logits_first[:, shared:], logits_second[:, shared:], atol=1e-3)


def test_scratch_llama_is_seeded():
    sizes = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    first, _ = load_backbone(backbone_config_from_dict({"kind": "scratch-llama", "seed": 1, "scratch": sizes}), "cpu")
    again, _ = load_backbone(backbone_config_from_dict({"kind": "scratch-llama", "seed": 1, "scratch": sizes}), "cpu")
    other, _ = load_backbone(backbone_config_from_dict({"kind": "scratch-llama", "seed": 2, "scratch": sizes}), "cpu")

    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_bfloat16_is_cuda_only():
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32


def test_config_rejects_unknown_key():
    with pytest.raises(ValueError, match=r"backbone has unknown keys \['hidden'\]"):
        backbone_config_from_dict({"kind": "scratch-llama", "hidden": 3})


def test_config_rejects_unknown_lora_key():
    with pytest.raises(ValueError, match=r"backbone.lora has unknown keys \['r'\]"):
        backbone_config_from_dict({"kind": "scratch-llama", "lora": {"r": 3}})


def test_config_requires_path_for_local_hf():
    with pytest.raises(ValueError, match="needs backbone.path"):
        BackboneConfig(kind="local-hf")


def test_config_rejects_odd_head_size():
    with pytest.raises(ValueError, match="head size 3 is odd"):
        backbone_config_from_dict({"kind": "scratch-llama", "scratch": {"hidden_size": 12, "num_heads": 4}})


@pytest.mark.parametrize("name", ["embedded_minilm", "scratch_llama", "local_hf"])
def test_backbone_yaml_builds_config(name):
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"))
    if name == "local_hf":
        assert values["path"] == "???"
        values["path"] = "/models/any"
    cfg = backbone_config_from_dict(values)
    assert cfg.kind == name.replace("_", "-")


def test_max_length_beyond_positions_raises():
    with pytest.raises(ValueError, match="exceeds the 512 positions of embedded-minilm"):
        load_backbone(BackboneConfig(kind="embedded-minilm", max_length=1024), "cpu")


def _loss_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (3, 12), generator=generator)  # (B, T)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding
    labels = torch.full_like(input_ids, -100)
    labels[0, 7:] = input_ids[0, 7:]
    labels[1, 5:9] = input_ids[1, 5:9]
    labels[2, 10:] = input_ids[2, 10:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral", "gpt2", "bert"])
def test_labelled_loss_matches_full_loss(model_type):
    if model_type == "bert":
        model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    else:
        tokenizer = build_bpe_tokenizer(with_bos=False)
        model = tiny_model(model_type, len(tokenizer))
    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    peft_model = apply_lora(model, tokenizer, LoraSettings(rank=4, dropout=0.0), ids)
    with torch.no_grad():  # move LoRA off its zero init so the adapter path counts
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    peft_model.eval()
    batch = _loss_batch(len(tokenizer))

    expected = peft_model(**batch).loss
    actual = causal_lm_loss(peft_model, batch)

    assert torch.allclose(actual, expected, atol=1e-5)


def test_labelled_loss_rejects_unlabelled_batch():
    model = tiny_model("llama", 300)
    batch = _loss_batch(300)
    batch["labels"].fill_(-100)
    with pytest.raises(ValueError, match="no labelled positions"):
        causal_lm_loss(model, batch)
