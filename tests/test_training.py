"""train_mosaic.py end to end on the tiny catalog: train, save, reload, predict; two processes; kill and
resume to the same weights; push through the Hub client and pull back; bad configs fail before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hub_servers import BareRepo, OlahServer, UploadServer, hub_env, run_isolated_python
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = str(ROOT / "configs" / "tiny.yaml")
# Few steps, a checkpoint every 4: enough to exercise evaluation, saving and resuming.
SHORT = ["--max_steps", "8", "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "4",
         "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from modeling_mosaic.catalog.writer import build_catalog

    path = tmp_path_factory.mktemp("catalog") / "tiny"
    build_catalog(path, "tiny")
    return str(path)


def train(catalog, out, *extra, callbacks=None):
    import train_mosaic

    return train_mosaic.main(["--config", TINY, "--data_path", catalog, "--output_dir", str(out), *SHORT, *extra],
                             callbacks=callbacks)


def lsst_inputs(catalog, n=16):
    from modeling_mosaic.catalog.io import load_catalog

    test = load_catalog(catalog, split="test").with_format("numpy")
    return {"lsst": np.asarray(test["lsst"][:n], dtype=np.float32)}


@pytest.fixture(scope="module")
def trained(catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    train(catalog, out)
    return out


def test_tiny_run_saves_a_loadable_checkpoint_with_card_and_data_statistics(catalog, trained):
    from transformers import AutoModel

    from modeling_mosaic.catalog.io import load_catalog, read_normalization
    from modeling_mosaic.evaluation.conditions import CONDITIONS

    for name in ("config.json", "model.safetensors", "configuration_mosaic.py", "modeling_mosaic.py",
                 "modalities.py", "README.md"):
        assert (trained / name).is_file(), name
    model = AutoModel.from_pretrained(trained)
    assert model.config.mask_query_probability == 0.3  # from tiny.yaml
    assert model.config.mask_queries == [c.given_ranges() for c in CONDITIONS]  # the five figure-2 input sets
    stats = read_normalization(catalog)
    for name in model.config.modalities:
        np.testing.assert_allclose(model.config.normalization[name]["mean"], stats[name]["mean"], rtol=1e-6)
    # step spreads: the std of each colour over the training rows (tiny.yaml holds the last 64 out)
    lsst = np.asarray(load_catalog(catalog, split="train").with_format("numpy")["lsst"], dtype=np.float64)[:-64]
    np.testing.assert_allclose(model.config.normalization["lsst"]["step_std"][1:], np.diff(lsst, axis=1).std(axis=0),
                               rtol=1e-5)
    out = model.predict(lsst_inputs(catalog), targets=["redshift", "log_stellar_mass", "sfh"])
    assert out["redshift"].shape == (16,) and out["sfh"].shape == (16, 100)
    assert all(np.isfinite(v).all() for v in out.values())
    assert (out["redshift"] >= 0).all() and (out["sfh"] >= 0).all()  # physical minimum of the registry

    card = (trained / "README.md").read_text()
    assert "{{" not in card and "tiny" in card and "eval_lsst_redshift_mae" in card
    history = json.loads((trained / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_lsst_redshift_mae" in h]
    assert evals and all(np.isfinite(h["eval_lsst_redshift_mae"]) for h in evals)
    # the headline photo-z pair: LSST + SPHEREx is evaluated at the same steps, on the same rows
    with_spherex = [h for h in history if "eval_lsst_spherex_redshift_mae" in h]
    assert [h["step"] for h in with_spherex] == [h["step"] for h in evals]
    assert all(np.isfinite(h["eval_lsst_spherex_redshift_mae"]) for h in with_spherex)
    assert any("eval_masked_loss" in h for h in history)


def test_gaussian_run_saves_calibration_for_the_figure2_queries(catalog, tmp_path):
    from transformers import AutoModel

    from modeling_mosaic.evaluation.conditions import SFH_LATE

    train(catalog, tmp_path / "model", "--head_type", "gaussian", "--max_steps", "4", "--save_strategy", "no")
    model = AutoModel.from_pretrained(tmp_path / "model")
    entries = {json.dumps(e["given"], sort_keys=True): e["temperature"] for e in model.config.calibration}
    late_start = int(np.argmax(SFH_LATE))
    expected = [{"lsst": [[0, 6]]}, {"lsst": [[0, 6]], "spherex": [[0, 102]]},
                {"lsst": [[0, 6]], "sfh": [[late_start, 100]]}, {"lsst": [[0, 6]], "sfh": [[0, late_start]]},
                {"log_stellar_mass": [[0, 1]]}]
    assert sorted(entries) == sorted(json.dumps(e, sort_keys=True) for e in expected)
    lsst_only = entries[json.dumps({"lsst": [[0, 6]]})]
    assert set(lsst_only) == set(model.config.modalities) - {"lsst"}
    assert all(0.2 <= t <= 5.0 for temperatures in entries.values() for t in temperatures.values())
    shifts = [e["shift"] for e in model.config.calibration]
    assert all(set(s) == set(e["temperature"]) for s, e in zip(shifts, model.config.calibration))
    assert all(-1.0 <= d <= 1.0 for s in shifts for d in s.values())

    # mosaic-calibrate refits on the last rows of a split exactly as `calibrate_for_conditions` does
    from modeling_mosaic.evaluation import calibrate_cli
    from modeling_mosaic.evaluation.conditions import calibrate_for_conditions
    from modeling_mosaic.evaluation.report import read_split

    assert calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", catalog, "--out",
                               str(tmp_path / "recalibrated"), "--rows", "100"]) == 0
    recalibrated = AutoModel.from_pretrained(tmp_path / "recalibrated").config.calibration
    columns = read_split(catalog, "train", model.config.modalities)
    model.config.calibration = []
    calibrate_for_conditions(model.eval(), {k: v[-100:] for k, v in columns.items()})
    assert recalibrated == model.config.calibration and len(recalibrated) == 5
    with pytest.raises(SystemExit, match="--rows 100000: the train split"):
        calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", catalog, "--out", str(tmp_path / "x"),
                            "--rows", "100000"])
    (tmp_path / "a_file").write_text("not a model folder")  # save_pretrained would log an error and save nothing
    with pytest.raises(SystemExit, match="--out .*a_file: a file, not a folder"):
        calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", catalog, "--out", str(tmp_path / "a_file")])


def test_an_error_aware_run_is_calibrated_with_the_errors_of_held_out_photometry_over_its_depths(tmp_path):
    """With error inputs and noise drawn over a range of depths, the end-of-training calibration (on the validation
    rows of a noisy catalog) gives the model the photometry's errors, observed afresh over the training range, and
    `mosaic-calibrate --depth-scale` (on the same rows, same seed) agrees; calibrated without the errors, or on the
    catalog's stored photometry at its one depth, it would differ."""
    from transformers import AutoModel

    from modeling_mosaic.catalog.writer import build_catalog
    from modeling_mosaic.evaluation import calibrate_cli
    from modeling_mosaic.evaluation.conditions import get_condition
    from modeling_mosaic.evaluation.report import read_split
    from modeling_mosaic.noise import CALIBRATION_NOISE_STREAM, depth_columns, error_columns, redraw_photometry

    catalog = str(tmp_path / "noisy")
    build_catalog(catalog, "tiny", noise="realistic")
    train(catalog, tmp_path / "model", "--head_type", "gaussian", "--error_inputs", "true", "--noise_on_the_fly",
          "true", "--noise_scale", "0.5", "2", "--max_steps", "4", "--save_strategy", "no", "--validation_size",
          "100")
    saved = AutoModel.from_pretrained(tmp_path / "model").config.calibration
    assert "observed afresh" in (tmp_path / "model" / "README.md").read_text()
    assert calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", catalog, "--out",
                               str(tmp_path / "recalibrated"), "--rows", "100", "--depth-scale", "0.5", "2"]) == 0
    model = AutoModel.from_pretrained(tmp_path / "recalibrated")
    assert model.config.calibration == saved and len(saved) == 5
    modalities = model.config.modalities
    stored = {k: v[-100:] for k, v in read_split(catalog, "train", [*modalities, *error_columns(modalities),
                                                                   *depth_columns(modalities)]).items()}
    redrawn = redraw_photometry(stored, modalities, (0.5, 2.0), 0, CALIBRATION_NOISE_STREAM)
    lsst = get_condition("lsst")
    truth = {n: stored[n] for n in lsst.targets(modalities)}
    fit = [model.eval().calibrate(lsst.inputs(held_out), truth, **errors)["redshift"]
           for held_out, errors in ((redrawn, {"errors": lsst.errors(redrawn)}), (redrawn, {}),
                                    (stored, {"errors": lsst.errors(stored)}))]
    entry = next(e for e in saved if e["given"] == {"lsst": [[0, 6]]})
    assert fit[0] == {"temperature": entry["temperature"]["redshift"], "shift": entry["shift"]["redshift"],
                      "pit_knots": entry["pit_knots"]["redshift"]}
    assert fit[1] != fit[0] and fit[2] != fit[0]  # the errors count, and so do the depths
    with pytest.raises(SystemExit, match="--depth-scale must satisfy"):
        calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", catalog, "--out", str(tmp_path / "x"),
                            "--depth-scale", "2", "1"])
    import pyarrow.parquet as pq

    (tmp_path / "bare" / "data").mkdir(parents=True)
    for shard in Path(catalog, "data").glob("train-*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.endswith("_flux_true")]),
                       tmp_path / "bare" / "data" / shard.name)
    with pytest.raises(SystemExit, match="flux_true.*noise-free"):  # without noise-free fluxes nothing to redraw
        calibrate_cli.main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "bare"), "--out",
                            str(tmp_path / "x"), "--depth-scale", "0.5", "2"])


def test_gaussian_run_calibrates_on_an_independent_catalog_drawn_with_another_seed(catalog, tmp_path):
    from transformers import AutoModel

    from modeling_mosaic.catalog.io import load_catalog
    from modeling_mosaic.evaluation.conditions import calibrate_for_conditions
    from modeling_mosaic.evaluation.report import read_split

    calibration_data = tmp_path / "calibration"
    train(catalog, tmp_path / "model", "--head_type", "gaussian", "--max_steps", "4", "--save_strategy", "no",
          "--catalog", "tiny", "--calibration_data", str(calibration_data), "--calibration_catalog_seed", "1",
          "--calibration_rows", "150")
    info = json.loads((calibration_data / "catalog.json").read_text())
    assert info["provenance"]["options"]["seed"] == 1  # built from the preset, another draw
    theirs, ours = (np.asarray(load_catalog(p, split="train").with_format("numpy")["redshift"][:50])
                    for p in (calibration_data, catalog))
    assert not np.allclose(theirs, ours)
    model = AutoModel.from_pretrained(tmp_path / "model")
    saved = model.config.calibration
    columns = read_split(str(calibration_data), "train", model.config.modalities)
    model.config.calibration = []
    calibrate_for_conditions(model.eval(), {k: v[-150:] for k, v in columns.items()})
    assert saved == model.config.calibration and len(saved) == 5  # the last 150 rows, as mosaic-calibrate
    assert "independent catalog" in (tmp_path / "model" / "README.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--calibration_rows", "10"], "need --calibration_data"),
    (["--calibration_data", "CATALOG"], "is the training catalog"),
    (["--calibration_data", "OTHER", "--calibration_catalog_seed", "0", "--catalog", "tiny"], "equals --catalog_seed"),
    (["--calibration_data", "CATALOG2", "--calibration_rows", "100000"], "--calibration_rows 100000: the train split"),
])
def test_bad_calibration_arguments_fail_before_training(catalog, tmp_path, extra, message):
    import shutil

    if "CATALOG2" in extra:
        shutil.copytree(catalog, tmp_path / "copy")
    names = {"CATALOG": catalog, "CATALOG2": str(tmp_path / "copy"), "OTHER": str(tmp_path / "other")}
    with pytest.raises(ValueError, match=message):
        train(catalog, tmp_path / "model", "--head_type", "gaussian", *[names.get(a, a) for a in extra])
    assert not (tmp_path / "model").exists() and not (tmp_path / "other").exists()


def test_query_and_loss_weights_reach_the_saved_config(catalog, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "weighted"
    train(catalog, out, "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "no",
          "--mask_query_weights", '{"lsst+spherex": 3, "stellar_mass": 0}', "--loss_weights", '{"redshift": 2}')
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.mask_query_weights == [1.0, 3.0, 1.0, 1.0, 0.0]  # figure-2 order: lsst, lsst+spherex, ...
    assert config.loss_weights == {n: 2.0 if n == "redshift" else 1.0 for n in config.modalities}


@pytest.mark.parametrize("extra, message", [
    (["--mask_query_weights", '{"lsst+sed": 2}'], r"--mask_query_weights: \['lsst\+sed'\] are not among"),
    (["--mask_query_weights", "[1, 2]"], "--mask_query_weights: expected a JSON object"),
    (["--loss_weights", "{redshift: 2}"], "--loss_weights: not valid JSON"),
    (["--validation_size", "0"], "--validation_size must be a positive integer, got 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be a positive integer, got 0"),
    (["--hidden_size", "-4"], "hidden_size must be >= 1, got -4"),
    (["--noise_scale", "1.5"], r"noise_scale must be two numbers, min and max, got \[1.5\]"),
    (["--loss_weights", '{"redshift": "x"}'], "loss_weights: 'redshift': x must name one of the modalities"),
    (["--loss_weights", '{"redshift": null}'], "loss_weights: 'redshift': None must name"),
    (["--mask_query_weights", '{"lsst": "a"}'], "mask_query_weights must hold 5 finite weights"),
    (["--hidden_dropout_prob", "1.5"], r"hidden_dropout_prob must lie in \[0, 1\), got 1.5"),
    (["--visible_loss_weight", "-1"], "visible_loss_weight must be finite and >= 0, got -1"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer, got 0"),
    (["--learning_rate", "-1"], "--learning_rate must be a finite positive number, got -1"),
])
def test_bad_weights_and_sizes_fail_before_anything_is_written(catalog, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train(catalog, tmp_path / "model", *extra)
    assert not (tmp_path / "model").exists()


def test_a_model_is_never_written_into_a_catalog_folder(catalog, tmp_path):
    import shutil

    shutil.copytree(catalog, tmp_path / "catalog")
    before = {p: p.read_bytes() for p in (tmp_path / "catalog").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="--output_dir .*catalog holds a catalog"):
        train(str(tmp_path / "catalog"), tmp_path / "catalog")
    assert {p: p.read_bytes() for p in (tmp_path / "catalog").rglob("*") if p.is_file()} == before


def test_persistent_workers_are_refused_before_training(catalog, tmp_path):
    with pytest.raises(ValueError, match="--dataloader_persistent_workers"):
        train(catalog, tmp_path / "model", "--dataloader_num_workers", "1", "--dataloader_persistent_workers", "true")
    assert not (tmp_path / "model").exists()


def test_a_calibration_seed_without_a_preset_is_refused(catalog, tmp_path):
    from train_mosaic import DataArguments

    from modeling_mosaic.training import prepare_calibration_catalog

    args = DataArguments(data_path=catalog, calibration_data=str(tmp_path / "other"), calibration_catalog_seed=1)
    with pytest.raises(ValueError, match="give --catalog too"):
        prepare_calibration_catalog(args, catalog)
    assert not (tmp_path / "other").exists()


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(catalog, trained, tmp_path):
    """Kill (SIGKILL) a run after its step-4 checkpoint, resume from it, and compare with `trained`."""
    out = tmp_path / "killed"
    killer = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import train_mosaic
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 6:
                    os.kill(os.getpid(), signal.SIGKILL)

        train_mosaic.main(sys.argv[1:], callbacks=[Kill()])
    """)
    args = ["--config", TINY, "--data_path", catalog, "--output_dir", str(out), *SHORT]
    done = subprocess.run([PYTHON, "-c", killer, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-2000:]
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()

    train(catalog, out, "--resume_from_checkpoint", str(out / "checkpoint-4"))
    resumed, reference = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert resumed.keys() == reference.keys()
    # A resume bug (optimiser state, schedule, masks of the wrong epoch) moves weights by ~lr = 1e-3 per step;
    # two-thread float sums on a loaded machine by ~1e-6.
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_two_processes_over_gloo(catalog, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs MULTI_CPU on a CPU machine: both ranks train."""
    from transformers import AutoModel

    out = tmp_path / "ddp"
    launcher = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    cmd = [*launcher, str(ROOT / "train_mosaic.py"), "--config", TINY, "--data_path", catalog,
           "--output_dir", str(out), *SHORT]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 process(es)" in (out / "README.md").read_text()  # the card records the world size it ran with
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    model = AutoModel.from_pretrained(out)
    assert np.isfinite(model.predict(lsst_inputs(catalog), targets=["redshift"])["redshift"]).all()


def test_model_folders_hold_no_pickle_and_their_training_arguments_as_json(trained):
    """The model folder and each checkpoint's keep the training arguments as JSON, not as the Trainer's pickle;
    beside the safetensors weights, only a checkpoint's resume state (optimiser, scheduler, RNG) is torch.save'd."""
    folders = [trained, *sorted(trained.glob("checkpoint-*"))]
    assert len(folders) == 3  # the end, and the saves at steps 4 and 8
    for folder in folders:
        assert not list(folder.glob("*.bin")), folder
        arguments = json.loads((folder / "training_args.json").read_text())
        assert arguments["output_dir"] == str(trained) and arguments["max_steps"] == 8, folder
    assert {p.suffix for p in trained.iterdir() if p.is_file()} <= {".json", ".safetensors", ".py", ".md"}
    for checkpoint in folders[1:]:
        resume_state = {p.name for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth")}
        assert resume_state == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}, checkpoint
    umask = os.umask(0o022)
    os.umask(umask)
    for folder in folders:  # safetensors writes 0600: a folder shared with a group had all but its weights readable
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask, folder


def test_pushing_during_training_is_refused_before_any_work(catalog, tmp_path):
    """The Trainer's own strategies push at every save, its pickles with them: refused by name, nothing written."""
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="--hub_strategy every_save"):
        train(catalog, out, "--push_to_hub", "true", "--hub_model_id", "org/x", "--hub_strategy", "every_save")
    assert not out.exists()


def test_push_to_hub_through_the_hub_client_then_pull(catalog, trained, tmp_path):
    """`--push_to_hub` pushes with the real huggingface_hub client to a local upload endpoint; the repo then
    loads through olah (a real Hub mirror) in a process that cannot import modeling_mosaic."""
    from transformers import AutoModel

    mirrors = tmp_path / "mirrors"
    out = tmp_path / "pushed"
    with UploadServer(mirrors) as upload_url:
        env = hub_env(upload_url, tmp_path / "hf_push")
        cmd = [PYTHON, str(ROOT / "train_mosaic.py"), "--config", TINY, "--data_path", catalog,
               "--output_dir", str(out), *SHORT, "--push_to_hub", "true", "--hub_model_id", "org/pushed-mosaic",
               "--hub_token", "hf_dummy_secret_token"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    # Pushed once, when training ended (--hub_strategy end by default), with its metrics, no pickle and no token.
    repo = BareRepo(BareRepo.location(mirrors, "models", "org/pushed-mosaic"))
    pushed = repo.files()
    assert {"config.json", "model.safetensors", "modeling_mosaic.py", "README.md", "training_args.json",
            "all_results.json", "trainer_state.json"} <= set(pushed)
    assert len(repo.history()) == 1
    assert not [name for name in pushed if name.endswith((".bin", ".pt", ".pth", ".pkl"))], sorted(pushed)
    assert not [name for name in pushed if b"hf_dummy_secret_token" in repo.read(name)]

    inputs = lsst_inputs(catalog)
    expected = AutoModel.from_pretrained(out).predict(inputs, targets=["redshift"])["redshift"]
    np.save(tmp_path / "lsst.npy", inputs["lsst"])
    code = textwrap.dedent("""
        import sys, numpy as np
        from transformers import AutoModel
        model = AutoModel.from_pretrained("org/pushed-mosaic", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        z = model.predict({"lsst": np.load(sys.argv[1])}, targets=["redshift"])["redshift"]
        np.save(sys.argv[2], z)
    """)
    with OlahServer(mirrors) as olah_url:
        run_isolated_python(code, str(tmp_path / "lsst.npy"), str(tmp_path / "z.npy"),
                            env=hub_env(olah_url, tmp_path / "hf_pull"), cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), expected)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config):
    """Every key of every shipped recipe is an argument the script knows (a misspelt one would only fail when
    a user starts that run); the GPU recipe with the CPU overrides the README gives."""
    import train_mosaic

    cpu = ["--bf16", "false", "--torch_compile", "false"] if config.name == "paper.yaml" else []
    model_args, data_args, training_args = train_mosaic.parse_args(["--config", str(config), *cpu])
    assert data_args.catalog == config.stem.removesuffix("_cpu")
    assert training_args.num_train_epochs > 0 and model_args.hidden_size > 0


def test_config_file_mistakes_name_the_file_and_any_suffix_or_spelling_of_config_works(tmp_path):
    import train_mosaic

    (tmp_path / "misspelt.yaml").write_text("catalog: tiny\nhiden_size: 32\n")
    (tmp_path / "broken.yaml").write_text("catalog: [tiny\n")
    (tmp_path / "recipe.cfg").write_text(json.dumps({"catalog": "tiny", "hidden_size": 48}))
    for name, message in (("misspelt.yaml", "misspelt.yaml: unknown argument.s. hiden_size"),
                          ("broken.yaml", "broken.yaml: not valid YAML or JSON")):
        with pytest.raises(SystemExit, match=message):
            train_mosaic.parse_args(["--config", str(tmp_path / name)])
    model_args, data_args, _ = train_mosaic.parse_args([f"--config={tmp_path / 'recipe.cfg'}"])
    assert (model_args.hidden_size, data_args.catalog) == (48, "tiny")


def test_a_model_without_spherex_evaluates_only_the_tasks_it_can_run(catalog, tmp_path):
    out = tmp_path / "no_spherex"
    train(catalog, out, "--modalities", "redshift", "log_stellar_mass", "lsst", "--max_steps", "4",
          "--save_strategy", "no")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = {key for h in history for key in h}
    assert "eval_lsst_redshift_mae" in logged
    assert not any(key.startswith("eval_lsst_spherex_") for key in logged)


def test_unknown_modality_fails_before_any_work(catalog, tmp_path):
    with pytest.raises(ValueError, match="unknown modality 'colour'.*redshift"):
        train(catalog, tmp_path / "bad", "--modalities", "redshift", "colour")
    assert not (tmp_path / "bad").exists()


def test_catalog_without_a_needed_column_is_named():
    from datasets import Dataset

    from modeling_mosaic.training import check_columns

    data = Dataset.from_dict({"galaxy_id": [0], "redshift": [0.5]})
    with pytest.raises(ValueError, match=r"catalog some/where has no column\(s\) lsst"):
        check_columns(data, ["redshift", "lsst"], "some/where")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_catalog_pushes_as_a_dataset_repo_that_load_dataset_reads(catalog, tmp_path):
    """`mosaic-catalog push` through the real Hub client; `load_dataset("org/name")` through olah, in a process
    without modeling_mosaic, returns the catalog's rows."""
    from modeling_mosaic.catalog.io import load_catalog

    mirrors = tmp_path / "mirrors"
    with UploadServer(mirrors) as upload_url:
        env = hub_env(upload_url, tmp_path / "hf_push", HF_TOKEN="dummy-token")
        cmd = [PYTHON, "-m", "modeling_mosaic.catalog.cli", "push", catalog, "--repo", "org/tiny-catalog"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    code = textwrap.dedent("""
        import sys, numpy as np
        from datasets import load_dataset
        test = load_dataset("org/tiny-catalog", split="test").with_format("numpy")
        np.savez(sys.argv[1], galaxy_id=test["galaxy_id"], lsst=np.stack(test["lsst"]), redshift=test["redshift"])
    """)
    with OlahServer(mirrors) as olah_url:
        run_isolated_python(code, str(tmp_path / "rows.npz"), env=hub_env(olah_url, tmp_path / "hf_pull"), cwd=tmp_path)
    pulled = np.load(tmp_path / "rows.npz")
    local = load_catalog(catalog, split="test").with_format("numpy")
    np.testing.assert_array_equal(pulled["galaxy_id"], local["galaxy_id"])
    np.testing.assert_array_equal(pulled["lsst"], np.stack(local["lsst"]))
    np.testing.assert_array_equal(pulled["redshift"], local["redshift"])


@pytest.mark.parametrize("max_in_memory_bytes", [2**40, 0], ids=["in-memory", "arrow-gather"])
def test_columnar_batches_equal_datasets_numpy_rows_and_null_vectors_become_nan(catalog, max_in_memory_bytes):
    """Both bulk paths (numpy arrays in memory, Arrow gathers) give what datasets' numpy formatting gives,
    dtypes included, in the sampler's (shuffled) order, and a null vector (a modality the catalog lacks for a
    galaxy) is all NaN."""
    import datasets

    from modeling_mosaic.catalog.io import load_catalog
    from modeling_mosaic.training import ColumnarDataset

    train = load_catalog(catalog, split="train")
    columns = ["redshift", "sfh", "lsst", "galaxy_id"]
    rows = [7, 0, 31, 7]
    fast = ColumnarDataset(train, columns, max_in_memory_bytes=max_in_memory_bytes).__getitems__(rows)
    slow = train.with_format("numpy", columns=columns)[rows]
    for name in columns:
        assert fast[name].dtype == slow[name].dtype and fast[name].shape == slow[name].shape, name
        np.testing.assert_array_equal(fast[name], slow[name])

    features = datasets.Features({"sfh": datasets.Sequence(datasets.Value("float32"), length=100),
                                  "galaxy_id": datasets.Value("int64")})
    holes = datasets.Dataset.from_dict({"sfh": [[1.0] * 100, None], "galaxy_id": [1, 2]}, features=features)
    batch = ColumnarDataset(holes, ["sfh", "galaxy_id"], max_in_memory_bytes=max_in_memory_bytes).__getitems__([1, 0])
    assert np.isnan(batch["sfh"][0]).all() and (batch["sfh"][1] == 1.0).all()
    np.testing.assert_array_equal(batch["galaxy_id"], [2, 1])
    assert (ColumnarDataset(holes, ["sfh"], max_in_memory_bytes=max_in_memory_bytes).arrays is None) == (
        max_in_memory_bytes == 0)


def test_an_output_dir_that_holds_files_and_a_broken_checkpoint_are_refused_before_anything_changes(
        catalog, trained, tmp_path):
    """A second run into a finished model's folder would rotate its checkpoints away and mix two runs: refused
    unless it resumes there or --overwrite_output_dir true. A checkpoint to resume from must be whole and hold
    safetensors weights; a model to start from likewise. --fp16 on a CPU would train float32 under an fp16 label."""
    import shutil

    import torch

    out = tmp_path / "model"
    shutil.copytree(trained, out)
    whole = sorted(out.glob("checkpoint-*"))[-1]
    half, pickled = out / "checkpoint-99", tmp_path / "pickled"
    shutil.copytree(whole, half)
    (half / "optimizer.pt").unlink()
    shutil.copytree(whole, pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    (tmp_path / "a_file").write_text("a user's file")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused = [
        ((out,), rf"--output_dir {out} already holds .*--overwrite_output_dir true"),
        ((tmp_path / "a_file",), "is a file; name a folder"),
        ((out, "--resume_from_checkpoint", str(half)), r"not a whole Trainer checkpoint \(no optimizer.pt\)"),
        ((tmp_path / "new", "--resume_from_checkpoint", str(pickled)), r"holds pickled weights \(\*.bin\)"),
        ((tmp_path / "new", "--resume_from_checkpoint", str(tmp_path / "nope")), "nope: no such folder"),
        ((tmp_path / "new", "--resume_from_checkpoint", "true"), "true: no checkpoint-N folder in"),
    ]
    if not torch.cuda.is_available():
        refused.append(((tmp_path / "new", "--fp16", "true"), "--fp16: float16 mixed precision needs a GPU"))
    for arguments, message in refused:
        with pytest.raises(ValueError, match=message):
            train(catalog, *arguments)
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="pickled: no model.safetensors; MOSAIC loads safetensors weights only"):
        train(catalog, tmp_path / "new", "--model_name_or_path", str(pickled))
    (pickled / "model.safetensors").write_bytes(before[pickled / "model.safetensors"])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    train(catalog, out, "--overwrite_output_dir", "true", "--seed", "1")  # told to: another run into the folder
    assert (out / "model.safetensors").read_bytes() != before[out / "model.safetensors"]


def test_a_catalog_too_small_to_hold_out_a_validation_row_is_named(tmp_path):
    from test_catalog_packaging import synthetic_source

    from modeling_mosaic.catalog.writer import Layout, write_catalog

    provenance = {"origin": "generated", "config": "synthetic", "options": {"n": 5, "seed": 0}}
    write_catalog(tmp_path / "four", synthetic_source, Layout(n_train=4, n_test=1, rows_per_file=5), provenance)
    with pytest.raises(ValueError, match="four: its train split has 4 rows; .* needs at least 5"):
        train(str(tmp_path / "four"), tmp_path / "model", "--catalog", "none")


def test_load_best_model_at_end_keeps_the_best_masked_loss(catalog, tmp_path):
    """The Trainer's default metric (eval_loss) is a key this run never logs (its losses are per eval set)."""
    train(catalog, tmp_path / "model", "--load_best_model_at_end", "true")
    state = json.loads((tmp_path / "model" / "trainer_state.json").read_text())
    assert state["best_metric"] == min(e["eval_masked_loss"] for e in state["log_history"] if "eval_masked_loss" in e)


def test_a_catalog_with_null_vector_rows_or_a_column_its_shards_lack_trains(catalog, tmp_path):
    """Null rows (a catalog written by other tools) and a modality absent from the Parquet shards are missing
    values, like NaN: the run trains and calibrates on the rest with finite losses."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "nulls"
    shutil.copytree(catalog, copy)
    for shard in sorted((copy / "data").glob("*.parquet")):
        table = pq.read_table(shard)
        sed = table.column("sed").combine_chunks()
        nulls = pa.array(np.arange(len(table)) % 3 == 0)
        table = table.set_column(table.schema.get_field_index("sed"), "sed",
                                 pa.compute.if_else(nulls, pa.scalar(None, sed.type), sed))
        pq.write_table(table.drop_columns(["spherex"]), shard)
    train(str(copy), tmp_path / "model", "--head_type", "gaussian")
    state = json.loads((tmp_path / "model" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and np.isfinite(losses).all()


def test_a_folder_that_is_not_the_preset_asked_for_is_refused_and_catalog_none_unsets_it(catalog, tmp_path):
    """With a preset (tiny.yaml's `catalog: tiny`) an existing --data_path must be that preset drawn with the
    options asked for: another seed, noise or an imported catalog would be trained on silently."""
    import shutil

    copy = tmp_path / "imported"
    shutil.copytree(catalog, copy)
    info = json.loads((copy / "catalog.json").read_text())
    info["provenance"] = {"origin": "imported", "inputs": []}
    (copy / "catalog.json").write_text(json.dumps(info))
    for data, extra, message in (
            (catalog, ["--catalog_seed", "5"], "built with seed=0, but --catalog_seed 5 asks for another draw"),
            (catalog, ["--noise", "realistic"], "built with noise=none, but --noise realistic"),
            (str(copy), [], "holds an imported catalog, not the 'tiny' preset that --catalog names")):
        with pytest.raises(ValueError, match=message):
            train(data, tmp_path / "model", *extra)
    assert not (tmp_path / "model").exists()
    train(str(copy), tmp_path / "model", "--catalog", "none", "--max_steps", "2", "--save_strategy", "no")
    assert "Imported from" in (tmp_path / "model" / "README.md").read_text()


def test_a_checkpoint_is_not_silently_given_other_model_arguments(catalog, trained, tmp_path):
    """--model_name_or_path keeps the checkpoint's config: an argument given otherwise (not left at its default)
    would be ignored, so it is named; --resume_from_checkpoint needs the architecture it saved (a torch size
    mismatch traceback otherwise). Arguments equal to the checkpoint's (tiny.yaml's own) pass."""
    checkpoint = sorted(trained.glob("checkpoint-*"))[-1]
    for extra, message in (
            (["--model_name_or_path", str(trained), "--hidden_size", "64"], "--hidden_size 64 .the checkpoint's: 32."),
            (["--model_name_or_path", str(trained), "--loss_weights", '{"redshift": 5}'],
             "--loss_weights redshift: 5 .the checkpoint's: 1.0."),
            (["--model_name_or_path", str(tmp_path / "nope")], "--model_name_or_path .*nope"),
            (["--resume_from_checkpoint", str(checkpoint), "--hidden_size", "64"],
             "its model has hidden_size=32, this run's 64")):
        with pytest.raises(ValueError, match=message):
            train(catalog, tmp_path / "model", *extra)
    train(catalog, tmp_path / "model", "--model_name_or_path", str(trained), "--max_steps", "2", "--save_strategy",
          "no")


def test_a_point_head_builds_no_calibration_catalog_and_says_so(catalog, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        train(catalog, tmp_path / "model", "--catalog", "tiny", "--calibration_data", str(tmp_path / "calibration"),
              "--calibration_catalog_seed", "1", "--max_steps", "2", "--save_strategy", "no")
    assert not (tmp_path / "calibration").exists()
    assert f"--calibration_data {tmp_path / 'calibration'} is not used: a point head" in caplog.text


def test_compiled_training_on_a_cpu_runs_with_full_determinism(tmp_path):
    """Inductor's kernels do not sum in a fixed order: two compiled demo-shaped runs of one seed (8 steps of 256 on
    the tiny catalog) ended with different weights, and agree with --full_determinism (docs/measurements.md). So a
    compiled CPU run sets it; an eager one, reproducible without it, is left as it was."""
    from transformers import TrainingArguments

    from modeling_mosaic.training import reproducible_compile

    for compiled in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, torch_compile=compiled, report_to="none")
        reproducible_compile(args)
        assert args.full_determinism is compiled
