"""``hf://`` addresses, tested offline against a hub cache filled by the test itself.

The cache layout is huggingface_hub's: ``models--<owner>--<repo>/refs/<branch>`` holds
a commit hash and ``snapshots/<commit>/`` the repository's files.
"""

from __future__ import annotations

import pytest
import torch

import saehooks as sh
from saehooks.io import hub, save_sae

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache holding owner/saes with a SAELens and a sparsify SAE."""
    cache = tmp_path / "hub"
    repo = cache / "models--owner--saes"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    sae = sh.SAE(
        sh.SAEConfig(
            d_in=8, d_sae=16, architecture="topk", k=3, hook_name="blocks.0.hook_resid_post"
        )
    )
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(generator=torch.Generator().manual_seed(0))
    sae.save(snapshot / "saelens" / "blocks.0.hook_resid_post")
    save_sae(sae, snapshot / "sparsify" / "layers.0", format="sparsify")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return sae


def test_offline_load_uses_the_local_cache(hub_cache):
    x = torch.randn(5, 8)
    for url in (
        "hf://owner/saes/saelens/blocks.0.hook_resid_post",
        f"hf://owner/saes@{COMMIT}/sparsify/layers.0",
    ):
        sae = sh.load_sae(url)
        assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
        assert torch.equal(sae.encode(x), hub_cache.encode(x))


def test_offline_miss_says_what_to_download(hub_cache):
    with pytest.raises(
        FileNotFoundError,
        match=r"HF_HUB_OFFLINE is set.*hf download "
        r"owner/other --include 'layer_3/\*'",
    ):
        sh.load_sae("hf://owner/other/layer_3")
    with pytest.raises(FileNotFoundError, match="has no folder 'missing'"):
        sh.load_sae("hf://owner/saes/missing")


def test_hub_addresses_are_parsed():
    assert hub.parse("hf://a/b/c/d") == hub.HubLocation("a/b", None, "c/d")
    assert hub.parse("hf://a/b@v1.0/x/") == hub.HubLocation("a/b", "v1.0", "x")
    assert hub.parse("hf://a/b") == hub.HubLocation("a/b", None, "")
    with pytest.raises(ValueError, match="hf://<owner>/<repo>/<folder>"):
        hub.parse("hf://only-owner")
