"""Training objectives declare the TrainConfig fields they read, once (issue #12): the
declaration is what they can read, every field is read by an objective or the loop, the
resume check follows from the declarations, and the loop logs from the first step."""

from __future__ import annotations

import ast
import csv
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

import saehooks.training as training_pkg
from saehooks import distributed
from saehooks.errors import SAEHooksError, TrainingDivergedError
from saehooks.training import Trainer, device
from saehooks.training.config import ARCHITECTURES, TrainConfig
from saehooks.training.objectives import (
    OBJECTIVES,
    BatchTopKObjective,
    ConfigFields,
    JumpReLUObjective,
    KLObjective,
    L1Objective,
    MatryoshkaBatchTopKObjective,
    StepState,
    TopKObjective,
    make_objective,
    objective_class,
)
from saehooks.training.trainer import LOOP_FIELDS, RESUME_FREE, resume_checked_fields

try:
    from tests import conftest_training as _fixtures
except ImportError:  # pytest's rootdir-relative import mode
    import conftest_training as _fixtures

FakeStore, fake_config = _fixtures.FakeStore, _fixtures.fake_config
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
TRAINING = Path(training_pkg.__file__).parent


def test_there_is_one_objective_per_architecture():
    assert tuple(OBJECTIVES) == ARCHITECTURES
    saved_as = {name: cls.inference_architecture for name, cls in OBJECTIVES.items()}
    unit_norm = {name: cls.unit_norm_decoder for name, cls in OBJECTIVES.items()}
    known = ("topk", "batchtopk", "l1", "kl", "jumprelu", "matryoshka_batchtopk", "mlp")
    assert [saved_as[name] for name in known] == [
        "topk",
        "jumprelu",
        "relu",
        "relu",
        "jumprelu",
        "jumprelu",
        "mlp",
    ]
    assert [unit_norm[name] for name in known] == [True, True, False, True, True, True, True]
    with pytest.raises(
        SAEHooksError,
        match="unknown training architecture 'gated'; pass one of topk, batchtopk, l1, kl, "
        "jumprelu, matryoshka_batchtopk, mlp",
    ):
        objective_class("gated")


def test_every_config_field_is_read_by_an_objective_or_the_loop():
    declared = set(LOOP_FIELDS).union(*(cls.fields for cls in OBJECTIVES.values()))
    assert declared == FIELDS, (sorted(FIELDS - declared), sorted(declared - FIELDS))
    assert RESUME_FREE <= LOOP_FIELDS


def test_objective_fields_as_declared():
    aux = {"k", "auxk", "aux_k", "aux_coefficient"}
    penalised = {
        "sparse_kernels",
        "sparsity_warmup_fraction",
        "total_tokens",
        "batch_size",
        "target_l0",
        "target_l0_rate",
        "target_l0_max_factor",
        "resample_dead",
        "resample_every_tokens",
        "resample_stop_fraction",
    }
    assert TopKObjective.fields == aux | {"sparse_kernels"}
    assert BatchTopKObjective.fields == aux
    assert MatryoshkaBatchTopKObjective.fields == aux | {"matryoshka_prefixes"}
    assert L1Objective.fields == penalised | {"leak", "l1_coefficient"}
    assert KLObjective.fields == penalised | {
        "leak",
        "kl_beta",
        "kl_rho",
        "kl_scale",
        "kl_window_tokens",
    }
    assert JumpReLUObjective.fields == penalised | {
        "l0_coefficient",
        "jumprelu_bandwidth",
        "jumprelu_init_threshold",
        "jumprelu_threshold_lr_factor",
    }


def test_an_undeclared_read_fails_and_names_the_reader():
    view = ConfigFields(TrainConfig(), frozenset({"k", "total_tokens", "batch_size"}), "Mine")
    assert view.k == 32 and view.read == {"k"}
    assert view.total_steps == 20_000_000 // 4096 + 1  # a property of declared fields
    assert view.read == {"k", "total_tokens", "batch_size"}
    with pytest.raises(
        AttributeError,
        match="Mine reads TrainConfig.kl_beta but does not declare kl_beta in Mine.fields",
    ):
        _ = view.kl_beta
    with pytest.raises(AttributeError, match="does not declare batch_size"):
        _ = ConfigFields(TrainConfig(), frozenset({"total_tokens"}), "Mine").total_steps
    with pytest.raises(AttributeError):
        view.k = 3  # read-only


# every branch: dead latents (AuxK), resampling at every batch, the L0 controller after
# a warm-up of 0 steps; both forward paths of topk
BRANCHY = dict(
    d_sae=256,
    k=1,
    dead_window_tokens=64,
    total_tokens=6 * 64,
    checkpoint_every_tokens=0,
    resample_every_tokens=64,
    resample_stop_fraction=1.0,
    target_l0=2.0,
    sparsity_warmup_fraction=0.0,
    l1_coefficient=0.1,
    kl_beta=0.1,
    kl_rho=0.05,
)


@pytest.mark.parametrize(
    "arch,sparse_kernels",
    [
        ("topk", True),
        ("topk", False),
        ("batchtopk", True),
        ("l1", True),
        ("l1", False),
        ("kl", True),
        ("kl", False),
        ("jumprelu", True),
        ("jumprelu", False),
        ("matryoshka_batchtopk", True),
    ],
)
def test_each_objective_reads_exactly_the_fields_it_declares(arch, sparse_kernels, tmp_path):
    cfg = fake_config(tmp_path, architecture=arch, sparse_kernels=sparse_kernels, **BRANCHY)
    trainer = Trainer(None, FakeStore(), cfg)
    for _ in range(4):
        trainer.train_step()
    # AuxK had dead latents (the penalised objectives resample them instead)
    assert bool(trainer.tracker.dead.any()) or arch in ("l1", "kl", "jumprelu")
    trainer.folded_sae()
    objective = trainer.objective
    assert objective.cfg.read == type(objective).fields


def _loop_reads() -> set[str]:
    """Field names the loop reads as ``cfg.<name>`` / ``self.cfg.<name>``: trainer.py,
    launch.py, stores.py and device.training_device (parsed, not run)."""
    files = ("trainer.py", "launch.py", "stores.py")
    trees = [ast.parse((TRAINING / name).read_text()) for name in files]
    trees.append(ast.parse(inspect.getsource(device.training_device)))
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "cfg") or (
                    isinstance(owner, ast.Attribute)
                    and owner.attr == "cfg"
                    and isinstance(owner.value, ast.Name)
                    and owner.value.id == "self"
                ):
                    names.add(node.attr)
    return names


def test_the_loop_reads_exactly_its_declared_fields():
    reads = _loop_reads()
    assert reads & FIELDS == LOOP_FIELDS, (
        sorted(LOOP_FIELDS - reads),
        sorted((reads & FIELDS) - LOOP_FIELDS),
    )


def test_no_training_module_reads_another_modules_private_names():
    allowed = {"_replace", "_asdict", "_fields"}  # NamedTuple's public API
    found = []
    for path in sorted(TRAINING.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in allowed
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom):
                found += [
                    f"{path.name}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not found


@pytest.mark.filterwarnings("ignore:.*objective does not read")  # set on purpose here
def test_resume_checks_follow_from_the_declarations(tmp_path):
    topk = make_objective(fake_config(tmp_path))
    assert resume_checked_fields(topk) == (LOOP_FIELDS - RESUME_FREE) | TopKObjective.fields
    cfg = fake_config(tmp_path / "topk")
    Trainer(None, FakeStore(), cfg).run(max_steps=5)  # checkpoint at step 4
    # fields topk does not read may change (target_l0_max_factor was refused before)
    same = dataclasses.replace(
        cfg, kl_beta=9.0, l1_coefficient=0.5, target_l0_max_factor=2.0, kl_window_tokens=64
    )
    assert Trainer(None, FakeStore(), same, resume_from=tmp_path / "topk").step_count == 4
    with pytest.raises(SAEHooksError, match=r"the run had aux_k=0 \(now 3\)"):
        Trainer(None, FakeStore(), dataclasses.replace(cfg, aux_k=3), resume_from=tmp_path / "topk")
    kl_cfg = fake_config(tmp_path / "kl", architecture="kl", kl_rho=0.05)
    Trainer(None, FakeStore(), kl_cfg).run(max_steps=5)
    assert (
        Trainer(
            None,
            FakeStore(),
            dataclasses.replace(kl_cfg, k=7, auxk=False),
            resume_from=tmp_path / "kl",
        ).step_count
        == 4
    )
    with pytest.raises(SAEHooksError, match=r"kl_window_tokens=32768 \(now 64\)"):
        Trainer(
            None,
            FakeStore(),
            dataclasses.replace(kl_cfg, kl_window_tokens=64),
            resume_from=tmp_path / "kl",
        )


class RecordingStore(FakeStore):
    """FakeStore that keeps every batch it served."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[torch.Tensor] = []

    def next_batch(self) -> torch.Tensor:
        batch = super().next_batch()
        self.served.append(batch)
        return batch


def test_the_first_log_row_is_written_after_step_1(tmp_path, capsys):
    # issue #12: progress shows loss / FVU / L0 from the first steps, not only every 25
    cfg = fake_config(
        tmp_path,
        total_tokens=10 * 64,
        log_every_steps=4,
        checkpoint_every_tokens=0,
        progress_bar=True,
    )
    store = RecordingStore()
    trainer = Trainer(None, store, cfg)
    n_init = len(store.served)  # batches the initialisation read
    outs = []
    step = trainer.train_step

    def recording_step():
        outs.append(step())
        return outs[-1]

    trainer.train_step = recording_step
    trainer.run()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 4, 8, 10]
    # the step-1 row is that step alone: its FVU about the batch mean, its L0 and loss
    first, x = outs[0], (store.served[n_init] * trainer.scale).double()
    x_hat = first.x_hat.double()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert float(rows[0]["fvu"]) == pytest.approx(fvu, rel=1e-9)
    assert float(rows[0]["l0"]) == first.l0 > 0
    assert float(rows[0]["loss"]) == float(first.loss.detach())
    assert float(rows[0]["mse"]) == pytest.approx(
        float(((x - x_hat) ** 2).sum(-1).mean()), rel=1e-6
    )
    # the step-4 row averages steps 2-4
    assert float(rows[1]["l0"]) == pytest.approx(sum(o.l0 for o in outs[1:4]) / 3)
    capsys.readouterr()
    again = Trainer(None, FakeStore(), dataclasses.replace(cfg, out_dir=str(tmp_path / "b")))
    assert again.run(max_steps=1) is None
    assert "FVU=" in capsys.readouterr().err  # the bar shows it after one step


# ---- a diverged run stops before its weights go bad ------------------------------------


def test_a_non_finite_loss_stops_the_run_before_the_optimizer_step(tmp_path, monkeypatch):
    trainer = Trainer(None, FakeStore(), fake_config(tmp_path, total_tokens=20 * 64))
    for _ in range(3):
        trainer.train_step()
    before = {k: v.detach().clone() for k, v in trainer.sae.state_dict().items()}
    real = trainer.objective.forward

    def nan_loss(sae, x, state):
        out = real(sae, x, state)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(trainer.objective, "forward", nan_loss)
    with pytest.raises(TrainingDivergedError, match=r"at step 3: the loss is nan.*lower lr"):
        trainer.train_step()
    for k, v in trainer.sae.state_dict().items():
        assert torch.equal(v, before[k]), k  # no step was taken


def test_data_parallel_ranks_all_see_a_non_finite_loss_on_any_rank(tmp_path, monkeypatch):
    """The loss rides on the gradients' all-reduce, so a NaN on the other rank reaches
    this one (which then raises too, instead of waiting in the next collective)."""
    trainer = Trainer(None, FakeStore(), fake_config(tmp_path))
    state = StepState(0, 0, trainer.tracker.dead)
    out = trainer.objective.forward(trainer.sae, trainer.store.next_batch() * trainer.scale, state)
    out.loss.backward()
    grads = [p.grad.clone() for p in trainer.sae.parameters() if p.grad is not None]
    trainer.ranks = 2

    def other_rank(loss):
        def add(t, op="sum"):
            other = torch.cat([g.reshape(-1) for g in grads] + [t.new_tensor([loss])])
            t += other
            return t

        return add

    monkeypatch.setattr(distributed, "all_reduce_", other_rank(3.0))
    assert trainer._average_gradients(1.0) == 2.0  # the mean loss
    for p, g in zip([p for p in trainer.sae.parameters() if p.grad is not None], grads):
        torch.testing.assert_close(p.grad, g)  # equal gradients average to themselves
    monkeypatch.setattr(distributed, "all_reduce_", other_rank(float("nan")))
    mean = trainer._average_gradients(1.0)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        trainer._check_finite(mean)
