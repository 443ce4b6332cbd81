"""Converting first-wave pickled artifacts: a new safe version with its lineage, never silent loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convergence import governance as gov
from convergence.pipelines import _lm as lm
from convergence.pipelines import _nets as nets
from convergence.pipelines import convert_legacy
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, InvalidInput, UnsafeArtifact
from tests.people import person

ARCH = {"n_in": 12, "hidden": [8], "dropout": 0.0}


def legacy_trading(path: Path, *, quantized: bool = False, extra: object = None) -> Path:
    """What the first wave wrote: a torch.save dict (a pickle of tensors and numpy arrays)."""
    import torch

    torch.manual_seed(0)
    net = nets.from_arch(ARCH).eval()
    net = nets.quantize_int8(net) if quantized else net
    blob = {"format": nets.LEGACY_FORMAT, "role": "quantized" if quantized else "student", "arch": ARCH,
            "quantized": quantized, "state_dict": net.state_dict(), "mean": np.zeros(12), "std": np.ones(12),
            "y_scale": 0.5, "meta": {"window": 4}}
    if extra is not None:
        blob["extra"] = extra
    torch.save(blob, path)
    return path


def register_first_wave(path: Path, monkeypatch: pytest.MonkeyPatch, *, family: str = "trading",
                        role: str = "student", parent_id: int | None = None) -> int:
    """Register as the first wave did, before registration checked the format (the check is switched off for
    this one call: that code no longer exists to run)."""
    import convergence.governance._registry as registry

    with monkeypatch.context() as m:
        m.setattr(registry, "check_artifact", lambda *a, **k: None)
        with session_scope() as s:
            return gov.register_model(session=s, principal=person("bob"), name=f"old-{family}-{role}", artifact=path,
                                      family=family, role=role, parent_id=parent_id, metrics={"ic": 0.1},
                                      params={"epochs": 3}).id


class _Payload:
    target = ""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Payload.target),))


def test_a_first_wave_trading_artifact_converts_to_an_equivalent_safe_version(db_url: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            model_file: Path) -> None:
    with session_scope() as s:
        teacher = gov.register_model(session=s, principal=person("bob"), name="t", artifact=model_file,
                                     family="trading", role="teacher").id
    old_id = register_first_wave(legacy_trading(tmp_path / "old.pt"), monkeypatch, parent_id=teacher)
    with session_scope(write=False) as s:
        old_path = gov.load_artifact(session=s, version_id=old_id)
    with pytest.raises(UnsafeArtifact):
        nets.load_artifact(old_path)  # nothing serves or trains from it
    new = convert_legacy(principal=person("quant"), version_id=old_id)
    assert (new["name"], new["stage"], new["parent_id"], new["role"]) == ("old-trading-student", "candidate",
                                                                          teacher, "student")
    assert new["params"]["converted_from"]["version_id"] == old_id and new["params"]["epochs"] == 3
    assert new["params"]["converted_from"]["max_abs_diff"] == 0.0 and new["metrics"] == {"ic": 0.1}
    with session_scope(write=False) as s:
        net, blob = nets.load_artifact(gov.load_artifact(session=s, version_id=new["id"]))
        mv = gov.get_model(session=s, version_id=new["id"])
        assert mv.registrant_id == person("quant").id  # the converter registers it: four eyes start again
        assert gov.verify(session=s).ok
    old_net, _ = nets.read_legacy_artifact(old_path)
    x = np.random.default_rng(1).standard_normal((16, 12)).astype(np.float32)
    np.testing.assert_array_equal(nets.predict(net, x), nets.predict(old_net, x))
    with pytest.raises(InvalidInput, match="already a safe artifact"):
        convert_legacy(principal=person("quant"), version_id=new["id"])


def test_an_int8_and_a_language_artifact_convert_too(db_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    int8 = register_first_wave(legacy_trading(tmp_path / "q.pt", quantized=True), monkeypatch, role="quantized")
    assert convert_legacy(principal=person("quant"), version_id=int8)["params"]["converted_from"]["max_abs_diff"] == 0
    tok = lm.train_tokenizer(["we the people of the united states"] * 20, vocab_size=280, min_frequency=1)
    spec = lm.arch(vocab=tok.get_vocab_size(), context=16, d_model=16, layers=1, heads=2)
    model = lm.build(spec)
    torch.save({"format": lm.LEGACY_FORMAT, "role": "student", "arch": spec, "tokenizer": tok.to_str(),
                "state_dict": model.state_dict(), "meta": {}}, tmp_path / "lm.pt")
    old = register_first_wave(tmp_path / "lm.pt", monkeypatch, family="language")
    new = convert_legacy(principal=person("nlp"), version_id=old)
    with session_scope(write=False) as s:
        back, tokenizer, _ = lm.load_artifact(gov.load_artifact(session=s, version_id=new["id"]))
    prompt = lm.encode(tokenizer, "we the")
    assert lm.generate(back, [prompt], max_new_tokens=6) == lm.generate(model.eval(), [prompt], max_new_tokens=6)


def test_a_first_wave_file_with_code_in_it_is_refused_and_never_runs(db_url: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _Payload.target = str(tmp_path / "pwned")
    old = register_first_wave(legacy_trading(tmp_path / "evil.pt", extra=_Payload()), monkeypatch)
    with pytest.raises(UnsafeArtifact, match="plain data"):
        convert_legacy(principal=person("quant"), version_id=old)
    assert not (tmp_path / "pwned").exists()
    with session_scope(write=False) as s:
        assert [m.id for m in gov.list_models(session=s)] == [old]


def test_only_a_registrant_converts(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = register_first_wave(legacy_trading(tmp_path / "old.pt"), monkeypatch)
    with pytest.raises(Forbidden):
        convert_legacy(principal=person("carol"), version_id=old)
