"""ID tokens in WordPiece and byte-level BPE tokenizers, LoRA with trainable ID rows, and overfitting 4 examples."""

from __future__ import annotations

import pytest
import torch
from test_backbone import ID_TOKENS, build_bpe_tokenizer, save_tiny_folder, tiny_model

from ttds.backbone import (
    BackboneConfig,
    GenerationCollator,
    LoraSettings,
    PromptCollator,
    add_id_tokens,
    apply_lora,
    backbone_config_from_dict,
    causal_lm_loss,
    check_single_id_tokens,
    id_tokens_to_text,
    load_backbone,
)


@pytest.fixture(params=["wordpiece", "bpe"])
def tokenizer_with_ids(request):
    if request.param == "wordpiece":
        model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    else:
        tokenizer = build_bpe_tokenizer(with_bos=True)
        model = tiny_model("llama", len(tokenizer))
    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    return tokenizer, ids


def test_each_id_token_is_one_id(tokenizer_with_ids):
    tokenizer, ids = tokenizer_with_ids
    for token, expected in zip(ID_TOKENS, ids, strict=True):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [expected]


def test_adjacent_id_tokens_are_two_ids(tokenizer_with_ids):
    tokenizer, _ = tokenizer_with_ids
    ids = tokenizer("<a_12><b_1>", add_special_tokens=False)["input_ids"]
    assert ids == tokenizer.convert_tokens_to_ids(["<a_12>", "<b_1>"])


def test_id_tokens_inside_text_stay_whole(tokenizer_with_ids):
    tokenizer, _ = tokenizer_with_ids
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer("user<ua_3>bought <a_12><b_1>, then", add_special_tokens=False)["input_ids"]
    )
    assert "<ua_3>" in pieces
    assert "<a_12>" in pieces
    assert "<b_1>" in pieces


def test_id_tokens_round_trip(tokenizer_with_ids):
    tokenizer, ids = tokenizer_with_ids
    for token, token_id in zip(ID_TOKENS, ids, strict=True):
        assert tokenizer.decode([token_id]) == token

    pair = tokenizer("<a_12><b_1>", add_special_tokens=False)["input_ids"]
    assert id_tokens_to_text(tokenizer, pair) == "<a_12><b_1>"
    assert tokenizer(tokenizer.decode(pair), add_special_tokens=False)["input_ids"] == pair
    assert tokenizer.decode(pair, skip_special_tokens=True).replace(" ", "") == "<a_12><b_1>"


def test_bpe_decode_is_exact():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    add_id_tokens(tiny_model("llama", len(tokenizer)), tokenizer, ID_TOKENS)
    text = "next: <a_12><b_1><c_7>"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_uppercase_token_is_not_matched():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    assert not set(tokenizer("<A_12>", add_special_tokens=False)["input_ids"]) & set(ids)


def test_new_rows_start_at_mean_with_seeded_noise():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    first, again = tiny_model("llama", len(tokenizer)), tiny_model("llama", len(tokenizer))
    old_rows = first.get_input_embeddings().weight[: len(tokenizer)].detach().clone()  # (V_old, D)
    old_head = first.get_output_embeddings().weight[: len(tokenizer)].detach().clone()
    ids = add_id_tokens(first, tokenizer, ID_TOKENS, seed=3)
    add_id_tokens(again, build_bpe_tokenizer(with_bos=False), ID_TOKENS, seed=3)

    new_rows = first.get_input_embeddings().weight[ids].detach()  # (8, D)
    new_head = first.get_output_embeddings().weight[ids].detach()
    assert torch.equal(first.get_input_embeddings().weight[: len(old_rows)], old_rows)
    assert torch.allclose(new_rows.mean(0), old_rows.mean(0), atol=0.05 * old_rows.std().item())
    assert torch.allclose(new_head.mean(0), old_head.mean(0), atol=0.05 * old_head.std().item())
    assert (new_rows - old_rows.mean(0)).abs().max() < 0.2 * old_rows.std()
    assert not torch.equal(new_rows[0], new_rows[1])
    assert torch.equal(new_rows, again.get_input_embeddings().weight[ids].detach())


def test_existing_token_keeps_its_row():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    model = tiny_model("llama", len(tokenizer))
    add_id_tokens(model, tokenizer, ["<a_1>"])
    row = model.get_input_embeddings().weight[-1].detach().clone()
    ids = add_id_tokens(model, tokenizer, ["<a_1>", "<a_2>"])
    assert ids[0] == len(tokenizer) - 2
    assert torch.equal(model.get_input_embeddings().weight[ids[0]], row)


def test_token_with_space_raises():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    with pytest.raises(ValueError, match="contains whitespace"):
        add_id_tokens(tiny_model("llama", len(tokenizer)), tokenizer, ["<a 1>"])


def test_duplicate_tokens_raise():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    with pytest.raises(ValueError, match=r"\['<a_1>'\] appear more than once"):
        add_id_tokens(tiny_model("llama", len(tokenizer)), tokenizer, ["<a_1>", "<b_1>", "<a_1>"])


def test_check_rejects_token_not_added():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    with pytest.raises(ValueError, match=r"'<a_5>' encodes to \d+ ids"):
        check_single_id_tokens(tokenizer, ["<a_5>"])


@pytest.mark.parametrize("model_type, tie", [("llama", False), ("llama", True), ("gpt2", True)])
def test_lora_trains_only_adapter_and_id_rows(model_type, tie):
    tokenizer = build_bpe_tokenizer(with_bos=False)
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_model(model_type, len(tokenizer), tie=tie)
    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    frozen = {name: value.clone() for name, value in model.state_dict().items()}
    peft_model = apply_lora(model, tokenizer, LoraSettings(rank=4, dropout=0.0), ids)
    rows = ids + [tokenizer.eos_token_id]
    embedding_before = peft_model.get_input_embeddings()(torch.tensor(rows)).detach().clone()
    head_before = peft_model.get_output_embeddings()(torch.eye(32)).detach().clone()  # (D, V): column j = head row j

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = PromptCollator(tokenizer, 64)([("the user bought <a_12>", "<a_3><b_4>"), ("which item comes next?", "<c_7><d_0>")])
    causal_lm_loss(peft_model, batch).backward()
    optimizer.step()

    compared = set()
    for name, value in peft_model.get_base_model().state_dict().items():
        plain = name.replace(".base_layer", "").replace(".token_adapter", "")
        if plain in frozen and "lora_" not in name:
            assert torch.equal(value, frozen[plain]), name
            compared.add(plain)
    assert compared == set(frozen)

    embedding_after = peft_model.get_input_embeddings()(torch.tensor(rows)).detach()
    head_after = peft_model.get_output_embeddings()(torch.eye(32)).detach()
    other = [i for i in range(len(tokenizer)) if i not in rows]
    assert not torch.equal(embedding_after, embedding_before)
    assert not torch.equal(head_after[:, rows], head_before[:, rows])
    assert torch.equal(head_after[:, other], head_before[:, other])
    if tie:
        assert torch.allclose(head_after[:, rows].T, embedding_after)


def test_lora_unknown_architecture_raises():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    model = tiny_model("llama", len(tokenizer))
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="no default LoRA target modules for model_type='mystery'"):
        apply_lora(model, tokenizer, LoraSettings(), [0])


def test_lora_minilm_trains_head_transform():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    ids = add_id_tokens(model, tokenizer, ID_TOKENS)
    peft_model = apply_lora(model, tokenizer, LoraSettings(rank=4), ids)
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]

    assert any("predictions.transform.modules_to_save" in name for name in trainable)
    assert any("encoder.layer.5.intermediate.dense.lora_A" in name for name in trainable)
    assert not any("transform" in name and "lora_" in name for name in trainable)


OVERFIT_EXAMPLES = [
    ("user <ua_0> bought <a_1><b_2><c_0> next:", "<a_0><b_1><c_2>"),
    ("user <ua_1> bought <a_0><b_1><c_2> next:", "<a_2><b_3><c_1>"),
    ("user <ua_2> bought <a_2><b_3><c_1> next:", "<a_3><b_0><c_3>"),
    ("user <ua_3> bought <a_3><b_0><c_3> next:", "<a_1><b_2><c_0>"),
]


def test_overfit_model_generates_exact_ids(tmp_path):
    folder = save_tiny_folder(tmp_path / "llama", "llama")
    cfg = backbone_config_from_dict(
        {"kind": "local-hf", "path": str(folder), "max_length": 128, "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}
    )
    model, tokenizer = load_backbone(cfg, "cpu")
    tokens = [f"<{level}_{code}>" for level in "abc" for code in range(4)] + [f"<ua_{code}>" for code in range(4)]
    ids = add_id_tokens(model, tokenizer, tokens)
    peft_model = apply_lora(model, tokenizer, cfg.lora, ids)
    batch = PromptCollator(tokenizer, 64)(OVERFIT_EXAMPLES)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread, and other tests may share the cores
    try:
        peft_model.train()
        for _ in range(300):
            loss = causal_lm_loss(peft_model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if loss.item() < 0.02:
                break

        peft_model.eval()
        prompts = GenerationCollator(tokenizer, 60)([prompt for prompt, _ in OVERFIT_EXAMPLES])
        with torch.no_grad():
            output = peft_model.generate(**prompts, max_new_tokens=6, do_sample=False)
    finally:
        torch.set_num_threads(threads)

    assert loss.item() < 0.02
    generated = output[:, prompts["input_ids"].shape[1] :]  # (B, new tokens)
    for row, (_, response) in zip(generated.tolist(), OVERFIT_EXAMPLES, strict=True):
        expected = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert row[: len(expected)] == expected
        assert all(token == tokenizer.pad_token_id for token in row[len(expected) :])


def test_spare_embedding_rows_are_initialised():
    tokenizer = build_bpe_tokenizer(with_bos=False)
    model = tiny_model("llama", len(tokenizer) + 16)  # embedding padded beyond the tokenizer, as in Qwen2
    spare_before = model.get_input_embeddings().weight[len(tokenizer) : len(tokenizer) + len(ID_TOKENS)].detach().clone()
    mean = model.get_input_embeddings().weight[: len(tokenizer)].detach().mean(0)

    ids = add_id_tokens(model, tokenizer, ID_TOKENS)

    rows = model.get_input_embeddings().weight[ids].detach()
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 8
    assert ids == list(range(len(tokenizer) - len(ID_TOKENS), len(tokenizer)))
    assert not torch.equal(rows, spare_before)
    assert torch.allclose(rows.mean(0), mean, atol=0.05 * spare_before.std().item())
