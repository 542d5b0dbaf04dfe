"""Activation caches as datasets (issue #14 part 4): the multi-hook writer (exact, resumable
bit for bit, its manifest), the memory-mapped reader (epochs, shuffling, the rank split,
resumption), the tensor store, make_store's choices and ``saehooks cache`` end to end."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saehooks as sh
from saehooks import data
from saehooks.cli import build_parser, main
from saehooks.cli import run as cli_run
from saehooks.errors import (
    HookNameError,
    InputError,
    InputTypeError,
    SAEFileError,
    SAENotFoundError,
)
from saehooks.io.common import atomic_write_text, read_safetensors, write_safetensors
from saehooks.training import TrainConfig, Trainer
from saehooks.training import activation_cache as ac
from saehooks.training.activation_cache import (
    PROGRESS,
    cache_activations,
    model_fingerprint,
    read_cache_info,
)
from saehooks.training.stores import CachedActivationStore, TensorStore, make_store

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def rows():
    """[12, 64] held-out rows, BOS first: 755 activation tokens per hook (one row holds
    a second BOS)."""
    return sh.load_eval_tokens(12)[:, :64].clone()


def _plain_acts(model, rows, hook):
    """The hook's activations by a full forward, BOS positions dropped: [n, d] float32."""
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter=hook)
    return cache[hook][rows != model.tokenizer.bos_token_id].float()


def _shards(folder):
    info = read_cache_info(folder)
    return [read_safetensors(folder / s["file"])["acts"] for s in info["shards"]]


def _positions(cached, reference):
    """For each cached row, its index in ``reference``; asserts both hold the same rows
    (rows told apart by a random projection, unique here). To float32 rounding, not
    bitwise: the writer batches rows in its own order and stops after the deepest hook,
    and on CPUs with AVX-512 kernels a row's rounding depends on where it sits in the
    batch (measured: up to 7e-6 on values of ~1.6). The writers' own outputs are
    compared bitwise."""
    assert cached.shape == reference.shape
    w = torch.randn(reference.shape[1], generator=torch.Generator().manual_seed(0)).double()
    key_c, key_r = cached.double() @ w, reference.double() @ w
    assert torch.unique(key_r).numel() == reference.shape[0]
    order_c, order_r = torch.argsort(key_c), torch.argsort(key_r)
    torch.testing.assert_close(cached[order_c], reference[order_r], rtol=1e-5, atol=1e-5)
    pos = torch.empty_like(order_c)
    pos[order_c] = order_r
    return pos


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the writer -----------------------------------------------------------------------------
def test_multi_hook_cache_equals_per_hook_captures_exactly(model, rows, tmp_path):
    folders = cache_activations(model, rows, [H1, H2], tmp_path / "both", shard_tokens=200,
                                progress=False)  # fmt: skip
    positions = []
    for hook in (H1, H2):
        cached = torch.cat(_shards(folders[hook]))
        positions.append(_positions(cached, _plain_acts(model, rows, hook)))
        alone = cache_activations(model, rows, hook, tmp_path / hook, shard_tokens=200,
                                  progress=False, folder_per_hook=False)[hook]  # fmt: skip
        assert [torch.equal(a, b) for a, b in zip(_shards(alone), _shards(folders[hook]))] == [
            True
        ] * 4
    assert not torch.equal(positions[0], torch.arange(len(positions[0])))  # shuffled
    assert torch.equal(positions[0], positions[1])  # row i is the same token in both hooks


def test_the_manifest_says_what_the_cache_holds(model, rows, tmp_path):
    folders = cache_activations(model, rows, [H1, H2], tmp_path, n_tokens=500, shard_tokens=200,
                                progress=False)  # fmt: skip
    info = read_cache_info(folders[H2])
    reference = _plain_acts(model, rows, H2)
    assert info["hook_name"] == H2 and info["d_in"] == 256 and info["dtype"] == "float32"
    assert info["n_tokens"] == 500 and info["n_shards"] == 3
    assert [s["tokens"] for s in info["shards"]] == [200, 200, 100]
    assert info["model_name"] == "saehooks-reference-lm"
    assert info["model_fingerprint"] == model_fingerprint(model)
    assert info["context_size"] == 64 and info["prepend_bos"] is True and info["drop_bos"] is True
    assert info["hooks_written_together"] == [H1, H2] and info["source_exhausted"] is False
    # 500 tokens need 8 rows of 63: no more were read
    assert info["rows_read"] == 8
    served = torch.cat(_shards(folders[H2]))
    _positions(served, reference[:500])  # the first 500 tokens, in the order of the rows
    mean_norm = float(served.double().norm(dim=-1).mean())  # the same rows, reordered
    assert info["norm_scale"] == pytest.approx(16.0 / mean_norm, rel=1e-12)
    assert not (tmp_path / PROGRESS).exists() and not list(tmp_path.glob("cache_carry_*"))


def test_bfloat16_storage_holds_the_rounded_float32_cache(model, rows, tmp_path):
    full = cache_activations(model, rows, H1, tmp_path / "f32", shard_tokens=300,
                             progress=False)[H1]  # fmt: skip
    half = cache_activations(model, rows, H1, tmp_path / "bf16", shard_tokens=300,
                             dtype="bfloat16", progress=False)[H1]  # fmt: skip
    assert read_cache_info(half)["dtype"] == "bfloat16"
    for a, b in zip(_shards(full), _shards(half)):
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b)
    n = read_cache_info(half)["n_tokens"]
    store = CachedActivationStore(half, batch_size=n, seed=0, shards_per_group=3)
    batch = store.next_batch()
    assert batch.dtype == torch.float32
    _positions(batch, torch.cat(_shards(half)).float())


def test_a_finite_source_is_read_once_and_the_shortfall_is_said(model, rows, tmp_path):
    with pytest.warns(UserWarning, match="holds 755 activation tokens, fewer than the 5000"):
        folder = cache_activations(model, rows, H1, tmp_path, n_tokens=5000, shard_tokens=400,
                                   progress=False)[H1]  # fmt: skip
    info = read_cache_info(folder)
    assert info["n_tokens"] == 755 and info["source_exhausted"] is True
    assert info["rows_read"] == 12


@pytest.mark.parametrize("kill_at", [1, 4, 5, 8])
def test_a_killed_job_resumes_to_the_uninterrupted_cache_bit_for_bit(
    model, rows, tmp_path, monkeypatch, kill_at
):
    calls = {"capture": 0, "write": 0}
    real_capture, real_write = data.capture, ac.write_safetensors

    def counting_capture(*args, **kwargs):
        calls["capture"] += 1
        return real_capture(*args, **kwargs)

    def dying_write(*args, **kwargs):
        calls["write"] += 1
        if calls["write"] == kill_at:
            raise KeyboardInterrupt("killed")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(data, "capture", counting_capture)
    kwargs = dict(shard_tokens=150, model_batch_rows=4, progress=False)
    cache_activations(model, rows, [H1, H2], tmp_path / "full", **kwargs)
    full_forwards, calls["capture"] = calls["capture"], 0
    monkeypatch.setattr(ac, "write_safetensors", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, rows, [H1, H2], tmp_path / "killed", **kwargs)
    monkeypatch.setattr(ac, "write_safetensors", real_write)
    assert read_cache_info(tmp_path / "killed" / H1) is None  # unfinished
    before = calls["capture"]
    cache_activations(model, rows, [H1, H2], tmp_path / "killed", **kwargs)
    if kill_at > 2:  # a shard was complete: the resumed job did not start over
        assert calls["capture"] - before < full_forwards
    assert _files(tmp_path / "full") == _files(tmp_path / "killed")


def test_a_kill_between_the_carry_and_the_progress_file_resumes_exactly(
    model, rows, tmp_path, monkeypatch
):
    real = ac.atomic_write_text
    kwargs = dict(shard_tokens=150, model_batch_rows=4, progress=False)
    cache_activations(model, rows, [H1], tmp_path / "full", **kwargs)

    progress_writes = []

    def dies_on_second_progress(path, text):
        if path.name == PROGRESS:
            progress_writes.append(text)
            if len(progress_writes) == 2:
                raise KeyboardInterrupt("killed")
        return real(path, text)

    monkeypatch.setattr(ac, "atomic_write_text", dies_on_second_progress)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, rows, [H1], tmp_path / "killed", **kwargs)
    monkeypatch.setattr(ac, "atomic_write_text", real)
    assert (tmp_path / "killed" / "cache_carry_00001.safetensors").exists()  # orphaned
    cache_activations(model, rows, [H1], tmp_path / "killed", **kwargs)
    assert _files(tmp_path / "full") == _files(tmp_path / "killed")


def test_a_finished_cache_is_kept_and_other_settings_start_afresh(model, rows, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    folder = cache_activations(model, rows, H1, tmp_path, shard_tokens=300, progress=False)[H1]
    stamp = (folder / "cache.json").stat().st_mtime_ns
    monkeypatch.setattr(data, "capture", None)  # any forward would fail
    cache_activations(model, rows, H1, tmp_path, shard_tokens=300, progress=False)
    assert (folder / "cache.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"replacing the finished cache .*shard_tokens 300 -> 500"):
        cache_activations(model, rows, H1, tmp_path, shard_tokens=500, progress=False)
    info = read_cache_info(folder)
    assert [s["tokens"] for s in info["shards"]] == [500, 255]
    assert sorted(p.name for p in folder.glob("shard_*")) == [
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]


def test_writer_refuses_bad_requests(model, rows, tmp_path):
    with pytest.raises(InputError, match="not a \\[batch, pos, d\\] activation"):
        cache_activations(model, rows, "blocks.0.attn.hook_z", tmp_path, progress=False)
    with pytest.raises(InputError, match="repeats a hook"):
        cache_activations(model, rows, [H1, H1], tmp_path, progress=False)
    with pytest.raises(InputError, match="dtype must be one of"):
        cache_activations(model, rows, H1, tmp_path, dtype="int8", progress=False)
    with pytest.raises(InputError, match="pass n_tokens"):
        cache_activations(model, iter([rows[0]]), H1, tmp_path, progress=False)
    with pytest.raises(HookNameError):
        cache_activations(model, rows, "blocks.9.hook_resid_post", tmp_path, progress=False)


# ---- the reader ---------------------------------------------------------------------------
def _synthetic_cache(folder, sizes, d=3, dtype=torch.float32):
    """Shards whose rows hold their global index in every column (exact in bf16 to 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    start, shards = 0, []
    for i, n in enumerate(sizes):
        rows = torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, d)
        write_safetensors(folder / ac.shard_file(i), {"acts": rows.to(dtype)})
        shards.append({"file": ac.shard_file(i), "tokens": n})
        start += n
    info = {"hook_name": H1, "d_in": d, "n_tokens": start, "n_shards": len(sizes),
            "shards": shards, "drop_bos": True}  # fmt: skip
    atomic_write_text(folder / ac.CACHE_INFO, json.dumps(info))
    return start


def _plain_stream(sizes, seed, shards_per_group, n_rows):
    """The reader's stream written plainly: per epoch a seeded shard order, groups of
    shards concatenated in memory and permuted whole (the old reader's scheme)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out, epoch = [], 0
    while sum(map(len, out)) < n_rows:
        base = seed * 1_000_003 + epoch
        order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(base))
        for g in range(math.ceil(len(sizes) / shards_per_group)):
            ids = order[g * shards_per_group : (g + 1) * shards_per_group].tolist()
            group = torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i in ids])
            gen = torch.Generator().manual_seed(base * 7919 + g)
            out.append(group[torch.randperm(len(group), generator=gen)])
        epoch += 1
    return torch.cat(out)[:n_rows]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=7),
    spg=st.integers(1, 4),
    per_rank=st.integers(1, 25),
    world=st.integers(1, 4),
    seed=st.integers(0, 5),
    n_batches=st.integers(1, 12),
    bf16=st.booleans(),
)
def test_reader_stream_rank_split_and_epochs(
    tmp_path_factory, sizes, spg, per_rank, world, seed, n_batches, bf16
):
    folder = tmp_path_factory.mktemp("cache")
    n = _synthetic_cache(folder, sizes, dtype=torch.bfloat16 if bf16 else torch.float32)
    batch = per_rank * world
    one = CachedActivationStore(folder, batch, seed, spg, rank=0, world_size=1)
    ranks = [CachedActivationStore(folder, batch, seed, spg, rank=r, world_size=world)
             for r in range(world)]  # fmt: skip
    served = []
    for _ in range(n_batches):
        whole = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert all(p.shape == (per_rank, 3) for p in parts)
        assert torch.equal(torch.cat(parts), whole)  # the ranks' rows are the 1-process batch
        assert len({json.dumps(r.state_dict()[1]) for r in ranks}) == 1
        served.append(whole[:, 0].long())
    served = torch.cat(served)
    assert torch.equal(served, _plain_stream(sizes, seed, spg, len(served)))
    for e in range(len(served) // n):  # each full epoch serves every row exactly once
        assert torch.equal(served[e * n : (e + 1) * n].sort().values, torch.arange(n))


def test_reader_resumes_from_its_state_and_memory_maps(tmp_path):
    n = _synthetic_cache(tmp_path, [50, 30, 70, 20], d=4)
    store = CachedActivationStore(tmp_path, 32, seed=3, shards_per_group=2)
    for _ in range(5):
        store.next_batch()
    state = store.state_dict()
    assert state[1]["kind"] == "cache" and state[1]["rows"] == n
    ahead = [store.next_batch() for _ in range(9)]  # across groups and an epoch
    again = CachedActivationStore(tmp_path, 32, seed=3, shards_per_group=2)
    again.load_state_dict(*state)
    assert all(torch.equal(a, again.next_batch()) for a in ahead)
    assert again.epochs_done == pytest.approx(14 * 32 / n)
    shard = again.open_shard(1)  # a view of the mapped file, not a copy in memory
    maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith(
        str(tmp_path / ac.shard_file(1)))]  # fmt: skip
    spans = [[int(x, 16) for x in m[0].split("-")] for m in maps]
    assert any(lo <= shard.data_ptr() < hi for lo, hi in spans)
    with pytest.raises(InputError, match="state of a 'tensor' store"):
        again.load_state_dict({}, {"kind": "tensor", "epoch": 0, "group": 0, "offset": 0})
    with pytest.raises(InputError, match="cannot be split evenly over 3 ranks"):
        CachedActivationStore(tmp_path, 32, rank=0, world_size=3)


def test_reader_refuses_damaged_caches(tmp_path):
    _synthetic_cache(tmp_path, [10, 10])
    path = tmp_path / ac.shard_file(1)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(SAEFileError, match="truncated or malformed"):
        CachedActivationStore(tmp_path, 4)
    path.unlink()
    with pytest.raises(SAEFileError, match="shard missing"):
        CachedActivationStore(tmp_path, 4)
    with pytest.raises(SAENotFoundError, match="saehooks cache"):
        CachedActivationStore(tmp_path / "nothing", 4)


def test_reader_reads_a_cache_without_a_shard_list(tmp_path):
    """The layout pretrained/saes/build_saes.py wrote before: n_shards, no shard list."""
    _synthetic_cache(tmp_path, [8, 8, 5])
    info = json.loads((tmp_path / ac.CACHE_INFO).read_text())
    del info["shards"]
    (tmp_path / ac.CACHE_INFO).write_text(json.dumps(info))
    store = CachedActivationStore(tmp_path, 21, seed=0, shards_per_group=3)
    assert torch.equal(store.next_batch()[:, 0].sort().values, torch.arange(21.0))
    assert store.context == (None, None) and store.norm_scale is None


# ---- the tensor store ----------------------------------------------------------------------
def test_tensor_store_epochs_seeds_ranks_and_state():
    acts = torch.arange(50.0)[:, None].repeat(1, 2)
    store = TensorStore(acts, batch_size=20, seed=4)
    served = torch.cat([store.next_batch() for _ in range(5)])[:, 0]
    assert served.dtype == torch.float32
    for epoch in served.view(2, 50):  # every row once per epoch, in a new order each time
        assert torch.equal(epoch.sort().values, torch.arange(50.0))
    assert not torch.equal(served[:50], served[50:])
    gen = torch.Generator().manual_seed(4 * 1_000_003 * 7919)  # epoch 0, group 0
    assert torch.equal(served[:50], torch.randperm(50, generator=gen).float())
    halves = [TensorStore(acts.bfloat16(), 20, seed=4, rank=r, world_size=2) for r in (0, 1)]
    again = TensorStore(acts, 20, seed=4)
    for _ in range(4):
        whole = again.next_batch()
        assert torch.equal(torch.cat([h.next_batch() for h in halves]), whole)
    state = again.state_dict()
    ahead = again.next_batch()
    fresh = TensorStore(acts, 20, seed=4)
    fresh.load_state_dict(*state)
    assert torch.equal(fresh.next_batch(), ahead)
    with pytest.raises(InputError, match="made on 50 rows"):
        TensorStore(acts[:40], 20, seed=4).load_state_dict(*state)


def test_tensor_store_refuses_bad_tensors():
    with pytest.raises(InputTypeError, match="floating-point tensor"):
        TensorStore(torch.arange(6).view(3, 2))
    with pytest.raises(InputTypeError, match="floating-point tensor"):
        TensorStore([[1.0, 2.0]])
    with pytest.raises(InputError, match=r"\[n >= 1, d_in >= 1\], got shape \(2, 3, 4\)"):
        TensorStore(torch.zeros(2, 3, 4))
    with pytest.raises(InputError, match="got shape \\(0, 4\\)"):
        TensorStore(torch.zeros(0, 4))
    bad = torch.zeros(5, 4)
    bad[1, 2], bad[3, 0] = float("nan"), float("inf")
    with pytest.raises(InputError, match="holds 2 NaN or infinite"):
        TensorStore(bad)


def _cfg(tmp_path, **changes):
    base = dict(hook_name=H2, d_sae=64, k=4, batch_size=64, total_tokens=8 * 64,
                out_dir=str(tmp_path / "run"), progress_bar=False, matmul_dtype="float32",
                init_tokens=128, checkpoint_every_tokens=0, log_every_steps=4)  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_make_store_picks_the_tensor_the_cache_or_refuses(model, rows, tmp_path, monkeypatch):
    acts = torch.randn(300, 256)
    assert isinstance(make_store(None, acts, _cfg(tmp_path)), TensorStore)
    assert isinstance(make_store(model, acts, _cfg(tmp_path)), TensorStore)
    with pytest.raises(InputError, match="are 16 wide, the model's 'blocks.2.hook_resid_post'"):
        make_store(model, torch.randn(10, 16), _cfg(tmp_path))
    with pytest.raises(InputError, match="tensor without a model: token ids need the model"):
        make_store(None, rows, _cfg(tmp_path))
    with pytest.raises(InputError, match="no model or no token source"):
        make_store(None, None, _cfg(tmp_path))
    root = tmp_path / "cache"
    cache_activations(model, rows, [H1, H2], root, shard_tokens=200, progress=False)
    monkeypatch.setattr(data, "capture", None)  # reading a cache runs no forward
    for cache_dir in (root, root / H2):  # the `saehooks cache` root, or the hook's folder
        for m in (None, model):
            store = make_store(m, None, _cfg(tmp_path, cache_dir=str(cache_dir)))
            assert isinstance(store, CachedActivationStore) and store.cache_dir == root / H2
            assert store.context == (64, True)
    with pytest.raises(InputError, match="holds activations of 'blocks.1.hook_resid_post'"):
        make_store(None, None, _cfg(tmp_path, cache_dir=str(root / H1)))
    with pytest.raises(InputError, match="written with drop_bos=True"):
        make_store(None, None, _cfg(tmp_path, cache_dir=str(root), drop_bos=False))
    info = json.loads((root / H2 / "cache.json").read_text())
    (root / H2 / "cache.json").write_text(json.dumps({**info, "model_fingerprint": "0" * 16}))
    with pytest.raises(InputError, match="from other model weights"):
        make_store(model, rows, _cfg(tmp_path, cache_dir=str(root)))
    with pytest.raises(InputError, match="holds no finished cache"):
        make_store(None, None, _cfg(tmp_path, cache_dir=str(tmp_path / "empty")))
    # a cache of an older version: no shard list, and no word on BOS (taken from the rows)
    info = json.loads((root / H1 / "cache.json").read_text())
    del info["shards"], info["prepend_bos"]
    (root / H1 / "cache.json").write_text(json.dumps(info))
    cfg = _cfg(tmp_path, hook_name=H1, cache_dir=str(root / H1))
    assert make_store(model, rows, cfg).context == (64, True)
    assert make_store(None, None, cfg).context == (64, None)


def test_training_from_a_tensor_without_a_model(tmp_path):
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(16, 32, generator=gen)
    codes = (torch.rand(2000, 16, generator=gen) < 0.15) * torch.rand(2000, 16, generator=gen)
    acts = codes @ dirs
    cfg = _cfg(tmp_path, hook_name=H1, d_sae=32, k=4, total_tokens=40 * 64, lr=3e-3)
    store = make_store(None, acts, cfg)
    sae = Trainer(None, store, cfg).run()
    with torch.no_grad():
        fvu = float((sae(acts) - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())
    assert sae.cfg.d_in == 32 and fvu < 0.5


# ---- the command line ----------------------------------------------------------------------
def test_cli_caches_the_reference_training_split_and_train_reads_it(
    model, rows, tmp_path, monkeypatch, capsys
):
    import saehooks.reference as reference

    monkeypatch.setattr(reference, "load_train_tokens", lambda *a, **k: rows)
    out = tmp_path / "cache"
    args = build_parser().parse_args(
        [
            "cache",
            "--hooks",
            f"{H1}, {H2}",
            "--tokens",
            "0.5k",
            "--out",
            str(out),
            "--shard-tokens",
            "200",
            "--no-progress",
            "--dtype",
            "bfloat16",
        ]  # fmt: skip
    )
    assert cli_run(args, model=model) == 0
    said = capsys.readouterr().out
    for hook in (H1, H2):
        info = read_cache_info(out / hook)
        assert info["n_tokens"] == 500 and info["dtype"] == "bfloat16"
        assert f"{hook}: 500 tokens x 256 (bfloat16) in 3 shards at {out / hook}" in said
        assert f"norm_scale {info['norm_scale']:.6g}" in said
    assert f"saehooks train --hook {H1} --cache-dir {out / H1}" in said
    monkeypatch.setattr(data, "capture", None)  # training from the cache runs no forward
    import saehooks.reference

    monkeypatch.setattr(saehooks.reference, "load_train_tokens", None)  # and reads no tokens
    code = main(["train", "--hook", H2, "--cache-dir", str(out), "--out", str(tmp_path / "run"),
                 "--tokens", "512", "--batch-size", "64", "--d-sae", "64", "--k", "4",
                 "--init-tokens", "128", "--no-progress-bar", "--matmul-dtype", "float32",
                 "--checkpoint-every-tokens", "0"])  # fmt: skip
    assert code == 0
    sae = sh.load_sae(tmp_path / "run" / "sae")
    assert sae.cfg.hook_name == H2 and sae.cfg.metadata["context_size"] == 64
    capsys.readouterr()
    code = main(["train", "--hook", H2, "--cache-dir", str(out), "--out", str(tmp_path / "run"),
                 "--tokens", "512", "--batch-size", "64", "--d-sae", "64", "--k", "4",
                 "--init-tokens", "128", "--no-progress-bar", "--matmul-dtype", "float32",
                 "--checkpoint-every-tokens", "0", "--resume"])  # fmt: skip
    assert code == 0  # resuming a finished run says so (it once failed on missing metrics)
    assert "was already complete" in capsys.readouterr().out
    # without --hook, a one-hook cache folder says which hook the SAE reads
    code = main(["train", "--cache-dir", str(out / H1), "--out", str(tmp_path / "run1"),
                 "--tokens", "128", "--batch-size", "64", "--d-sae", "64", "--k", "4",
                 "--init-tokens", "128", "--no-progress-bar", "--matmul-dtype", "float32",
                 "--checkpoint-every-tokens", "0"])  # fmt: skip
    assert code == 0 and sh.load_sae(tmp_path / "run1" / "sae").cfg.hook_name == H1
    cfg = TrainConfig(
        hook_name=H2,
        cache_dir=str(out),
        out_dir=str(tmp_path / "api"),
        total_tokens=512,
        batch_size=64,
        d_sae=64,
        k=4,
        init_tokens=128,
        progress_bar=False,
        matmul_dtype="float32",
        checkpoint_every_tokens=0,
    )
    api = sh.train_sae(model, None, cfg)  # the same run through the API, no token source
    assert torch.equal(api.W_dec, sae.W_dec)


def test_cli_reads_token_and_text_files(model, rows, tmp_path, capsys):
    write_safetensors(tmp_path / "tokens.safetensors", {"tokens": rows[:4]})
    args = build_parser().parse_args(
        [
            "cache",
            "--hooks",
            H1,
            "--tokens-file",
            str(tmp_path / "tokens.safetensors"),
            "--out",
            str(tmp_path / "a"),
            "--no-progress",
        ]  # fmt: skip
    )
    assert cli_run(args, model=model) == 0
    _positions(torch.cat(_shards(tmp_path / "a" / H1)), _plain_acts(model, rows[:4], H1))
    text = "def add(a, b):\n    return a + b\n\n" * 40
    (tmp_path / "code.py").write_text(text)
    args = build_parser().parse_args(
        [
            "cache",
            "--hooks",
            H1,
            "--text-file",
            str(tmp_path / "code.py"),
            "--n-ctx",
            "32",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
        ]  # fmt: skip
    )
    assert cli_run(args, model=model) == 0
    n_rows = model.to_tokens(text, prepend_bos=False).shape[1] // 31
    info = read_cache_info(tmp_path / "b" / H1)
    assert info["context_size"] == 32 and info["rows_read"] == n_rows
    assert info["n_tokens"] == n_rows * 31
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.py").write_text(text)
    argv = ["cache", "--hooks", H1, "--text-file", str(folder), "--n-ctx", "32", "--out",
            str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    with pytest.raises(InputError, match="saehooks cache --tokens"):
        cli_run(build_parser().parse_args(argv), model=model)
    assert cli_run(build_parser().parse_args(argv + ["--tokens", "100"]), model=model) == 0
    info = read_cache_info(tmp_path / "c" / H1)
    assert info["n_tokens"] == 100 and info["context_size"] == 32 and info["prepend_bos"]
    capsys.readouterr()


def test_write_activation_cache_is_the_one_writer_for_a_live_store(model, rows, tmp_path):
    store = sh.training.ActivationStore(model, rows, H1, model_batch_rows=5)
    folder = ac.write_activation_cache(store, tmp_path / "a", None, shard_tokens=300,
                                       progress=False)  # fmt: skip
    cache_activations(model, rows, H1, tmp_path / "b", shard_tokens=300, model_batch_rows=5,
                      progress=False, folder_per_hook=False)  # fmt: skip
    assert folder == tmp_path / "a" and _files(tmp_path / "a") == _files(tmp_path / "b")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "x"], "--model needs data"),
        (["--tokens-file", "a", "--text-file", "b"], "not both"),
        (["--tokens-file", "missing.safetensors"], "does not exist"),
        (["--hooks", " , "], "names no hook"),
    ],
)
def test_cli_user_errors_are_one_line(argv, message, tmp_path, capsys):
    base = ["cache", "--hooks", H1, "--out", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(base + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("saehooks cache: error:") and message in err and "Traceback" not in err
