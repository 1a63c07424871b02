"""Each local Debugger rule fires on a run that has its problem and stays quiet on a healthy run."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from helpers import debugger_rules
from helpers.runtime import debugger
from helpers.runtime.debugger import Instrumentation
from helpers.debugger_rules import RULES, RuleConfigError, TrialError

HEALTHY = dict(lr=0.05, epochs=5, init_scale=1.0, n_train=400, class_weights=(1, 1, 1, 1), label_noise=0.0)


def blobs(n, class_weights, seed, label_noise=0.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor(class_weights, dtype=torch.float) / sum(class_weights)
    y = torch.multinomial(p, n, replacement=True, generator=g)
    centers = torch.tensor([[2.0, 0], [-2, 0], [0, 2], [0, -2]])
    x = centers[y] + 0.7 * torch.randn(n, 2, generator=g)
    x = torch.cat([x, torch.randn(n, 6, generator=g)], dim=1)  # 6 distracting dimensions
    if label_noise:
        flip = torch.rand(n, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, 4, (n,), generator=g), y)
    return x, y


def net(init_scale):
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict(
        block1=nn.Sequential(OrderedDict(fc=nn.Linear(8, 64), relu=nn.ReLU())),
        block2=nn.Sequential(OrderedDict(fc=nn.Linear(64, 64), relu=nn.ReLU())),
        out=nn.Linear(64, 4)))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(init_scale)
    return m


def run(tmp_path, *, lr, epochs, init_scale, n_train, class_weights, label_noise):
    """A tiny training with the production hook; returns the trial folder."""
    out = tmp_path / "tensors"
    model, crit = net(init_scale), nn.CrossEntropyLoss()
    hook = debugger.make_hook(out, model, crit, Instrumentation(debugger=True, train_save_interval=1,
                                                                eval_save_interval=1), frozen_body=False)
    x, y = blobs(n_train, class_weights, seed=1, label_noise=label_noise)
    xv, yv = blobs(200, class_weights, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with np.errstate(all="ignore"):
        for _ in range(epochs):
            debugger.train_mode(hook)
            model.train()
            for i in range(0, n_train, 32):
                xb, yb = x[i:i + 32], y[i:i + 32]
                out_b = model(xb)
                loss = crit(out_b, yb)
                debugger.save_batch(hook, yb, out_b)
                opt.zero_grad()
                loss.backward()
                opt.step()
            debugger.eval_mode(hook)
            model.eval()
            with torch.no_grad():
                for i in range(0, 200, 100):
                    crit(model(xv[i:i + 100]), yv[i:i + 100])
    hook.close()
    return out


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return debugger_rules.evaluate_rules(run(tmp_path_factory.mktemp("healthy"), **HEALTHY))


def status(results, name):
    return next(r for r in results if r.rule == name)


def test_a_healthy_run_raises_no_issue(healthy):
    assert [(r.rule, r.status) for r in healthy] == [(r.name, "NoIssuesFound") for r in RULES]


CASES = {
    "exploding_tensor": dict(lr=1e9),
    "vanishing_gradient": dict(init_scale=1e-4),
    "poor_weight_initialization": dict(init_scale=1e-4),
    "overfit": dict(n_train=40, epochs=60, label_noise=0.5, lr=0.2),
    "overtraining": dict(epochs=40, lr=0.5, n_train=160),
    "class_imbalance": dict(class_weights=(30, 1, 1, 1), n_train=800),
    "loss_not_decreasing": dict(lr=0.0),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_rule_fires_on_its_problem(tmp_path, rule):
    tensors = run(tmp_path, **{**HEALTHY, **CASES[rule]})
    info = next(r for r in RULES if r.name == rule)
    result = debugger_rules.evaluate_rule(debugger_rules.open_trial(tensors), info)
    assert result.status == "IssuesFound", result
    assert result.first_step is not None


def test_rule_parameters_are_checked(tmp_path):
    tensors = run(tmp_path, **{**HEALTHY, "epochs": 1})
    trial = debugger_rules.open_trial(tensors)
    bad = debugger_rules.evaluate_rule(trial, RULES[0], {"threshold": "tiny"})
    assert bad.status == "Error" and "threshold must be" in bad.detail
    unknown = debugger_rules.evaluate_rule(trial, RULES[2], {"ratio": 0.5})
    assert unknown.status == "Error" and "bad parameters for Overfit" in unknown.detail
    with pytest.raises(RuleConfigError, match="unknown rule"):
        debugger_rules.evaluate_rules(tensors, {"dead_relu": {}})


def test_a_trial_without_steps_is_a_clear_error(tmp_path):
    with pytest.raises(TrialError, match="holds no Debugger tensors"):
        debugger_rules.open_trial(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "training_job_end.ts").write_text("")
    with pytest.raises(TrialError):
        debugger_rules.open_trial(tmp_path / "empty")


def test_plot_data(tmp_path):
    trial = debugger_rules.open_trial(run(tmp_path, **{**HEALTHY, "epochs": 2}))
    curves = debugger_rules.loss_curves(trial)
    assert len(curves["train"][0]) == 26 and len(curves["valid"][0]) == 4
    norms = debugger_rules.gradient_norms(trial)
    assert "block1.fc.weight" in {k.split("_", 1)[1] for k in norms} and all(len(v[1]) == 26 for v in norms.values())
    weights = debugger_rules.weight_distributions(trial)
    first, last, s0, s1 = weights[next(iter(weights))]
    assert s0 < s1 and first.shape == last.shape and not np.allclose(first, last)


def test_the_hook_writes_tensors_without_ndarray_tostring():
    """smdebug 1.0.34 calls ndarray.tostring, gone in NumPy 2.3: our hook's writer builds the same protos with tobytes."""
    import warnings

    import smdebug.core.writer
    from smdebug.core.tfevent import util

    debugger.hook_class()
    assert smdebug.core.writer.make_tensor_proto is debugger._tensor_proto
    for value in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, 1], dtype=np.int64),
                  np.array(["a", "bc"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # tostring, still there before NumPy 2.3
            theirs = util.make_tensor_proto(value, "t").SerializeToString()
        assert debugger._tensor_proto(value, "t").SerializeToString() == theirs


def test_a_hook_config_file_named_by_smdebugs_variable_is_used(tmp_path):
    """SMDEBUG_CONFIG_FILE_PATH, as smdebug names it: the service's hook settings win over the local ones, but the
    tensors go with the job's output (where chapter 3 reads them), not to the config's LocalPath."""
    import json

    config = tmp_path / "debughookconfig.json"
    config.write_text(json.dumps({"LocalPath": str(tmp_path / "from-config"), "HookParameters": {"save_interval": "2"},
                                  "CollectionConfigurations": [{"CollectionName": "losses"}]}))
    model, crit = net(1.0), nn.CrossEntropyLoss()
    hook = debugger.make_hook(tmp_path / "local", model, crit, Instrumentation(debugger=True), frozen_body=False,
                              env={"SMDEBUG_CONFIG_FILE_PATH": str(config)})
    assert hook.out_dir == str(tmp_path / "local") and not (tmp_path / "from-config").exists()
    assert hook.save_config.get_save_config(debugger_modes().TRAIN).save_interval == 2  # the service's setting
    hook.close()


def debugger_modes():
    import smdebug.pytorch as smd

    return smd.modes


def test_rule_classes_are_module_level_and_smdebug_loads_only_to_evaluate():
    """One class per rule, built once (not on every call), in a module the catalogue imports only when needed."""
    import subprocess
    import sys

    assert debugger_rules.rule_class("vanishing_gradient") is debugger_rules.rule_class("VanishingGradient")
    assert debugger_rules.rule_class("class_imbalance").__module__ == "helpers.debugger_rule_classes"
    code = ("import sys, helpers.debugger_rules as d; assert 'smdebug' not in sys.modules, 'imported'; "
            "d.rule_class('overfit'); assert 'smdebug' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]


def test_global_steps_map_to_epochs_and_to_the_kept_epoch(tmp_path):
    """smdebug counts training and validation steps together: an epoch is its training batches, then its
    validation batches; a rule's step is related to its epoch and to the epoch whose weights were kept."""
    tensors = run(tmp_path, **{**HEALTHY, "epochs": 3})
    spans = debugger_rules.epoch_spans(debugger_rules.open_trial(tensors))
    per_epoch = -(-HEALTHY["n_train"] // 32) + 2  # training batches of 32, then 2 validation batches of 100
    assert [e for e, _, _ in spans] == [1, 2, 3]
    assert [(a, b) for _, a, b in spans] == [(i * per_epoch, (i + 1) * per_epoch - 1) for i in range(3)]
    late = debugger_rules.RuleResult("overfit", "IssuesFound", 2 * per_epoch + 1, "", "m", "a")
    lines = debugger_rules.step_insights([late], spans, kept_epoch=2)
    assert f"about {per_epoch} global steps" in lines[0]
    assert f"`overfit` fired at step {2 * per_epoch + 1}, in epoch 3, after epoch 2" in lines[1]
    table = debugger_rules.results_table([late], spans, explained=False)
    assert list(table.columns) == ["status", "first step", "epoch", "detail"] and table.loc["overfit", "epoch"] == 3


def test_each_rule_explains_itself_in_its_own_words():
    meanings = [r.meaning for r in RULES]
    assert len(set(meanings)) == len(meanings)
    by = {r.name: r for r in RULES}
    assert "new low" in by["overtraining"].meaning and "window" in by["loss_not_decreasing"].meaning
    results = [debugger_rules.RuleResult(r.name, "NoIssuesFound", None, "", r.meaning, r.action) for r in RULES]
    notes = debugger_rules.explanations(results)
    assert len(notes) == len(RULES) and notes[0].startswith("`vanishing_gradient` (NoIssuesFound): ")


def test_pretrained_weights_are_not_judged_as_an_initialisation(tmp_path, capfd, caplog):
    """With pretrained weights only the new head's activations count for poor_weight_initialization: the body's
    scales are ImageNet's, not this job's initialisation."""
    assert debugger_rules.rule_params({"weights": "none"}) == {}
    params = debugger_rules.rule_params({"weights": "DEFAULT"})
    tensors = run(tmp_path, **{**HEALTHY, **CASES["poor_weight_initialization"]})
    fired = status(debugger_rules.evaluate_rules(tensors), "poor_weight_initialization")
    scoped = status(debugger_rules.evaluate_rules(tensors, params), "poor_weight_initialization")
    assert fired.status == "IssuesFound" and "activation variance" not in scoped.detail
    said = "".join(capfd.readouterr()) + caplog.text
    assert "No tensors matching" not in said  # a regex that matches nothing is no warning line on the page
