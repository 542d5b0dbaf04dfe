"""Config files are read strictly; errors name the file and the field (issue #11 part 2).

Each example of the issue is a test: quoted booleans built the opposite setting,
``d_sae: "abc"`` named neither file nor field, ``d_sae: 4096.9`` was truncated, and a
``k`` without an architecture loaded as ReLU and ignored ``k``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_io import D_IN, D_SAE, K, inputs, rich_sae, write_legacy

import saehooks as sh
from saehooks.errors import SAEFileError, SAEHooksError
from saehooks.io import save_sae


def edit_cfg(folder: Path, **changes) -> Path:
    """Change fields of ``folder/cfg.json`` (``None`` removes one); returns the file."""
    path = folder / "cfg.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return path


def refused(folder: Path, *patterns: str) -> SAEFileError:
    with pytest.raises(SAEFileError) as info:
        sh.load_sae(folder)
    message = str(info.value)
    assert str(folder / "cfg.json") in message, message  # the file
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return info.value


@pytest.mark.parametrize("field", ["apply_b_dec_to_input", "rescale_acts_by_decoder_norm"])
@pytest.mark.parametrize("text", ["false", "true", "False", "0"])
def test_quoted_booleans_are_refused_not_flipped(tmp_path, field, text):
    rich_sae("topk").save(tmp_path)
    edit_cfg(tmp_path, **{field: text})
    hint = (
        rf'without quotes: "{field}": {text.lower()}'
        if text.lower() in ("true", "false")
        else rf'"{field}": true or false'
    )
    refused(
        tmp_path,
        rf"field '{field}' must be a JSON boolean",
        re.escape(f'"{text}"'),
        re.escape(hint),
    )


def test_a_number_is_not_a_boolean_either(tmp_path):
    rich_sae("relu").save(tmp_path)
    edit_cfg(tmp_path, apply_b_dec_to_input=0)
    refused(tmp_path, r"'apply_b_dec_to_input' must be a JSON boolean .*found 0 \(a number\)")


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("abc", r"field 'd_sae' must be an integer, found \"abc\" \(a string\)"),
        (4096.9, r"field 'd_sae' must be an integer, found 4096.9, which is not a whole number"),
        (True, r"field 'd_sae' must be an integer, found true \(a boolean\)"),
        (None, r"field 'd_sae' must be an integer, found null"),
        ([48], r"field 'd_sae' must be an integer, found \[48\] \(an array\)"),
        (0, r"field 'd_sae' must be >= 1, found 0"),
    ],
)
def test_bad_sizes_name_the_file_and_the_field(tmp_path, value, pattern):
    rich_sae("relu").save(tmp_path)
    path = tmp_path / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg["d_sae"] = value
    path.write_text(json.dumps(cfg))
    refused(tmp_path, pattern)


def test_an_integral_float_size_is_the_integer(tmp_path):
    sae = rich_sae("topk")
    sae.save(tmp_path)
    edit_cfg(tmp_path, d_sae=float(D_SAE), k=float(K))
    back = sh.load_sae(tmp_path)
    assert (back.cfg.d_sae, back.cfg.k) == (D_SAE, K) and type(back.cfg.d_sae) is int
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))


def test_k_without_an_architecture_is_refused_with_the_fix(tmp_path):
    rich_sae("topk").save(tmp_path)  # a v6 file (it has a metadata object)
    edit_cfg(tmp_path, architecture=None, rescale_acts_by_decoder_norm=None)
    refused(
        tmp_path,
        r"sets k=5 but no architecture",
        r"load as a ReLU SAE that ignores k",
        r'add "architecture": "topk"',
    )


def test_legacy_k_without_an_architecture_is_refused_with_the_fix(tmp_path):
    write_legacy(tmp_path, rich_sae("relu"), k=32)  # flat pre-v6 file, activation relu
    refused(tmp_path, r"sets k=32 but no architecture", r'add "architecture": "topk"')
    write_legacy(tmp_path / "std", rich_sae("relu"), k=32, architecture="standard")
    refused(tmp_path / "std", r"sets k=32 with architecture 'standard'")


@pytest.mark.parametrize("arch", ["standard", "gated"])
def test_k_with_an_architecture_that_has_none_is_refused(tmp_path, arch):
    rich_sae({"standard": "relu"}.get(arch, arch)).save(tmp_path)
    edit_cfg(tmp_path, k=32)
    refused(tmp_path, rf"sets k=32 with architecture '{arch}'", r'"architecture": "topk"')


def test_a_batch_topk_jumprelu_keeps_its_training_k_as_metadata(tmp_path):
    sae = rich_sae("jumprelu")
    sae.save(tmp_path)
    edit_cfg(tmp_path, k=K)
    back = sh.load_sae(tmp_path)
    assert back.cfg.architecture == "jumprelu" and back.cfg.k is None
    assert back.cfg.metadata["batch_topk_k"] == K
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))
    save_sae(back, tmp_path / "again")
    assert sh.load_sae(tmp_path / "again").cfg == back.cfg


def test_rescaling_on_a_non_topk_file_is_refused(tmp_path):
    rich_sae("jumprelu").save(tmp_path)
    edit_cfg(tmp_path, rescale_acts_by_decoder_norm=True)
    refused(tmp_path, r"rescale_acts_by_decoder_norm=true is a top-k option")


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("dtype", "int8", r"unsupported SAE dtype 'int8'"),
        ("dtype", 32, r"field 'dtype' must be a string, found 32"),
        ("architecture", 1, r"field 'architecture' must be a string"),
        ("normalize_activations", False, r"field 'normalize_activations' must be a string"),
        ("metadata", [1, 2], r"field 'metadata' must be a JSON object, found an array"),
        ("d_in", "16", r"field 'd_in' must be an integer, found \"16\""),
        ("k", "5", r"field 'k' must be an integer, found \"5\""),
    ],
)
def test_other_fields_of_the_wrong_type_are_named(tmp_path, field, value, pattern):
    rich_sae("topk").save(tmp_path)
    edit_cfg(tmp_path, **{field: value})
    refused(tmp_path, pattern)


def test_hook_name_of_the_wrong_type_is_named(tmp_path):
    rich_sae("relu").save(tmp_path)
    path = tmp_path / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg["metadata"]["hook_name"] = 3
    path.write_text(json.dumps(cfg))
    refused(tmp_path, r"field 'hook_name' must be a string")


def test_legacy_finetuning_flag_must_be_a_boolean(tmp_path):
    write_legacy(
        tmp_path,
        rich_sae("relu"),
        finetuning_scaling_factor="false",
        tensors={"scaling_factor": torch.ones(D_SAE)},
    )
    refused(tmp_path, r"'finetuning_scaling_factor' must be a JSON boolean")


# ---- sparsify -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("transcode", "false", r"'transcode' must be a JSON boolean"),
        ("skip_connection", "false", r"'skip_connection' must be a JSON boolean"),
        ("multi_topk", "no", r"'multi_topk' must be a JSON boolean"),
        ("num_latents", 47.5, r"'num_latents' must be an integer, found 47.5"),
        ("k", "5", r"'k' must be an integer"),
        ("d_in", None, r"missing required field 'd_in'"),
    ],
)
def test_sparsify_fields_are_read_strictly(tmp_path, field, value, pattern):
    folder = tmp_path / "layers.1"
    save_sae(rich_sae("topk"), folder, format="sparsify")
    edit_cfg(folder, **{field: value})
    refused(folder, pattern)


def test_a_sparsify_file_written_by_sparsify_keeps_its_settings(tmp_path):
    folder = tmp_path / "layers.1"
    sae = rich_sae("topk")
    save_sae(sae, folder, format="sparsify")
    edit_cfg(folder, metadata=None, hook_name=None)  # as sparsify itself writes it
    back = sh.load_sae(folder)
    assert back.cfg.hook_name == "blocks.1.hook_resid_post"  # from the folder name
    assert back.cfg.metadata["sparsify_config"]["num_latents"] == D_SAE
    assert torch.equal(back.encode(inputs()), sae.encode(inputs()))


# ---- dictionary_learning ------------------------------------------------------------
def test_dictionary_learning_config_fields_are_read_strictly(tmp_path):
    sae = rich_sae("relu")
    state = {
        "encoder.weight": sae.W_enc.T.contiguous(),
        "encoder.bias": sae.b_enc,
        "decoder.weight": sae.W_dec.T.contiguous(),
        "bias": sae.b_dec,
    }
    torch.save(state, tmp_path / "ae.pt")
    config = {"trainer": {"dict_class": "AutoEncoder", "layer": "3"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SAEFileError,
        match=r"config.json \(trainer\): field 'layer' must be "
        r"an integer, found \"3\"",
    ):
        sh.load_sae(tmp_path)
    config["trainer"]["layer"] = 3.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert sh.load_sae(tmp_path).cfg.hook_name == "blocks.3.hook_resid_post"
    (tmp_path / "config.json").write_text(json.dumps({"trainer": "AutoEncoder"}))
    with pytest.raises(SAEFileError, match=r"field 'trainer' must be a JSON object"):
        sh.load_sae(tmp_path)


def test_every_file_error_is_a_saehooks_error(tmp_path):
    rich_sae("relu").save(tmp_path)
    edit_cfg(tmp_path, d_in="x")
    with pytest.raises(SAEHooksError):
        sh.load_sae(tmp_path)
    with pytest.raises(ValueError):  # and still the builtin callers catch
        sh.load_sae(tmp_path)
    assert D_IN == 16
