"""`spo download` (and a later offline `spo generate`) against a loopback stand-in for the Hub.

Each test serves the tiny repos from `save_repos` under their real ids with `HubServer`, points the real
`spo` entry point at it with HF_ENDPOINT, and checks both what the user sees and exactly which files
went over the wire.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import base_copy, run_spo
from hubserver import HubServer
from spo_cli import presets

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier

BASE, MERGED, LORA, VAE = presets.SDXL_BASE, presets.SPO_MERGED, presets.SPO_LORA, presets.FP16_FIX_VAE
TOKEN = "hf_secret_test_token"
# What spo must never fetch: pickles, ONNX, Flax, OpenVINO, single-file checkpoints.
FORBIDDEN = re.compile(r"\.(bin|onnx|msgpack|ckpt|pt|pth)$|openvino|^sd_xl_base_1\.0\.safetensors$|^sdxl_vae\.")


def hub_env(server: HubServer, tmp: Path, **extra: str) -> dict[str, str]:
    """Online against `server`, in a fresh cache and HF_HOME (so no stored token is picked up)."""
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp / "hub"),
           "HF_HOME": str(tmp / "hf-home")}
    env.update(extra)
    return env


def pipeline_files(folder: Path, variant: str | None, without: tuple[str, ...] = ()) -> set[str]:
    """What diffusers' from_pretrained(use_safetensors=True, variant=…) reads from a pipeline folder:
    model_index.json, the configs and tokenizer files of each component, and its weights in `variant`
    (components passed in instead, such as a replacement VAE, in `without`, are not read)."""
    index = json.loads((folder / "model_index.json").read_text())
    components = {k for k, v in index.items()
                  if not k.startswith("_") and isinstance(v, list) and v[0] and k not in without}
    out = {"model_index.json"}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        top, _, name = rel.partition("/")
        if not p.is_file() or top not in components or "/" in name:
            continue
        stem, _, suffix = name.partition(".")
        if suffix in ("json", "txt") or suffix == (f"{variant}.safetensors" if variant else "safetensors"):
            out.add(rel)
    return out


def assert_fetched(hub: HubServer, repo: str, expected: set[str]) -> None:
    """`expected` and nothing else was asked for (HEAD or GET), and the bytes of each distinct blob
    among them went over the wire once (huggingface_hub links files of identical content, such as
    tokenizer/ and tokenizer_2/, to one blob without downloading it again)."""
    assert hub.files_requested(repo) == expected, (repo, hub.files_requested(repo) ^ expected)
    fetched = [f for r, f in hub.downloads if r == repo]
    assert len(fetched) == len(set(fetched)), fetched
    etags = {f: hub.repos[repo].files[f].etag for f in expected}
    assert set(fetched) <= expected
    assert sorted(etags[f] for f in fetched) == sorted(set(etags.values())), (repo, fetched)


def error_paragraph(stderr: str) -> str:
    assert "error:" in stderr, stderr
    return stderr[stderr.index("error:"):].strip()


def assert_one_paragraph(stderr: str) -> str:
    """The error is one paragraph (rich may wrap it, but no blank lines), with no traceback."""
    assert "Traceback" not in stderr, stderr
    text = error_paragraph(stderr)
    assert "\n\n" not in text, text
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------


def test_download_spo_lora_fetches_exactly_the_fp16_files(repos, tmp_path):
    with HubServer(repos, tree_page_size=7) as hub:  # small pages: the tree listing is paginated
        r = run_spo("download", "spo-lora", "--json", env=hub_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr

    # Exactly these files went over the wire.
    base = pipeline_files(repos[BASE], "fp16", without=("vae",))
    assert {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
            "tokenizer_2/vocab.json", "scheduler/scheduler_config.json"} <= base  # the rule is not vacuous
    assert_fetched(hub, BASE, base)
    assert_fetched(hub, LORA, {presets.SPO_LORA_FILE})
    assert_fetched(hub, VAE, {"config.json", "diffusion_pytorch_model.safetensors"})
    assert hub.fetched_repos() == {BASE, LORA, VAE}  # not the merged checkpoint
    # Nothing spo must not load was even asked about (HEAD included), in any repo.
    asked = {(r.repo_id, r.file) for r in hub.requests if r.file}
    assert not {a for a in asked if FORBIDDEN.search(a[1])}, asked
    assert not {f for f in hub.files_requested(BASE) if f.endswith(".safetensors") and ".fp16." not in f}
    assert not hub.unexpected(), hub.unexpected()

    out = json.loads(r.stdout)
    assert out["model"] == "spo-lora" and out["dtype"] == "float16"
    snapshot = Path(next(row["path"] for row in out["repos"] if row["id"] == BASE))
    assert {f for f in base if (snapshot / f).is_file()} == base  # every file is in the snapshot
    by_id = {row["id"]: row for row in out["repos"]}
    assert set(by_id) == {BASE, LORA, VAE}
    for repo_id, row in by_id.items():
        assert row["commit"] == hub.commits[repo_id], repo_id
        assert Path(row["path"]).exists()
        assert str(tmp_path / "hub") in row["path"]  # into HF_HUB_CACHE
    assert by_id[BASE]["variant"] == "fp16"
    assert by_id[LORA]["file"] == presets.SPO_LORA_FILE
    assert out["bytes"] == sum((repos[BASE] / f).stat().st_size for f in base) + sum(
        (repos[repo] / f).stat().st_size for repo, f in hub.downloads if repo != BASE)
    assert not {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()} - base


def test_download_base_fp32_fetches_plain_weights_and_no_vae(repos, tmp_path):
    with HubServer(repos) as hub:
        r = run_spo("download", "base", "--dtype", "fp32", "--json", env=hub_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    base = pipeline_files(repos[BASE], None)
    assert "unet/diffusion_pytorch_model.safetensors" in base
    assert_fetched(hub, BASE, base)
    assert not {f for f in hub.files_requested(BASE) if ".fp16." in f or FORBIDDEN.search(f)}
    assert hub.fetched_repos() == {BASE}
    # The fp16-fix VAE (and any other repo) was not even looked up.
    assert {r.repo_id for r in hub.requests if r.repo_id} == {BASE}
    out = json.loads(r.stdout)
    assert [(row["id"], row["commit"], row["variant"]) for row in out["repos"]] == [(BASE, hub.commits[BASE], None)]


@pytest.fixture(scope="module")
def lora_run(repos, tmp_path_factory):
    """Download spo-lora with HF_TOKEN set, then generate offline from that cache (HF_TOKEN still set)."""
    tmp = tmp_path_factory.mktemp("lora-run")
    with HubServer(repos) as hub:
        env = hub_env(hub, tmp, HF_TOKEN=TOKEN)
        download = run_spo("download", "spo-lora", "--json", env=env)
        assert download.returncode == 0, download.stderr
        requests_during_download = len(hub.requests)
        out = tmp / "out"
        # float16 (what `download` fetched) is many times slower than float32 on a CPU: the smallest image.
        generate = run_spo(
            "generate", "a fox", "--model", "spo-lora", "--width", "16", "--height", "16", "--steps", "1",
            "--device", "cpu", "--dtype", "fp16", "--out", str(out), "--json", "--seed", "7",
            env={**env, "HF_HUB_OFFLINE": "1"},
        )
        requests_during_generate = hub.requests[requests_during_download:]
    return SimpleNamespace(hub=hub, tmp=tmp, out=out, download=download, generate=generate,
                           requests_during_generate=requests_during_generate)


def test_generate_offline_after_download_records_the_commits(lora_run):
    g, hub = lora_run.generate, lora_run.hub
    assert g.returncode == 0, g.stderr
    assert "Traceback" not in g.stderr
    assert lora_run.requests_during_generate == []  # offline: not one request
    written = json.loads(g.stdout)
    assert len(written) == 1
    assert Path(written[0]["image"]).is_file()
    meta = json.loads(Path(written[0]["sidecar"]).read_text())
    assert (meta["model"]["id"], meta["model"]["commit"]) == (BASE, hub.commits[BASE])
    assert meta["model"]["variant"] == "fp16"
    assert (meta["lora"]["id"], meta["lora"]["commit"], meta["lora"]["file"]) == (
        LORA, hub.commits[LORA], presets.SPO_LORA_FILE)
    assert (meta["vae"]["id"], meta["vae"]["commit"]) == (VAE, hub.commits[VAE])


def test_token_is_sent_but_never_written(lora_run):
    hub = lora_run.hub
    assert lora_run.download.returncode == 0 and lora_run.generate.returncode == 0
    # Used: every request to the Hub carried it...
    to_hub = [r for r in hub.requests if r.server == "hub" and r.repo_id]
    assert to_hub and all(r.authorization == f"Bearer {TOKEN}" for r in to_hub)
    # ...and, as with the real CDN, it was not forwarded off the Hub with the LFS redirects.
    to_cdn = [r for r in hub.requests if r.server == "cdn"]
    assert to_cdn and all(r.authorization is None for r in to_cdn)
    # Never stored: not in the images, sidecars, the cache or HF_HOME, nor printed.
    secret = TOKEN.encode()
    files = [p for p in lora_run.tmp.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in lora_run.out.iterdir())
    leaked = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaked, leaked
    for proc in (lora_run.download, lora_run.generate):
        assert TOKEN not in proc.stdout and TOKEN not in proc.stderr


def test_gated_repo_asks_for_a_token(repos, tmp_path):
    with HubServer(repos, gated={BASE}, granted_tokens={"hf_granted"}) as hub:
        anonymous = run_spo("download", "base", "--dtype", "fp32", env=hub_env(hub, tmp_path / "a"))
        refused = run_spo("download", "base", "--dtype", "fp32", env=hub_env(hub, tmp_path / "b", HF_TOKEN="hf_no"))
        granted = run_spo("download", "base", "--dtype", "fp32", env=hub_env(hub, tmp_path / "c", HF_TOKEN="hf_granted"))
    statuses = [r.status for r in hub.requests if r.server == "hub" and r.file]
    assert 401 in statuses and 403 in statuses  # both the anonymous and the not-authorized answers were met
    for r in (anonymous, refused):
        assert r.returncode == 1, r.stderr
        text = assert_one_paragraph(r.stderr)
        assert "gated" in text and BASE in text
        assert "HF_TOKEN" in text and "login" in text
    assert granted.returncode == 0, granted.stderr
    assert_fetched(hub, BASE, pipeline_files(repos[BASE], None))


@pytest.mark.parametrize("status", [404, 401])  # 401: what the real Hub answers anonymous clients
def test_unknown_repo_is_not_found(repos, tmp_path, status):
    with HubServer(repos, unknown_status=status) as hub:
        r = run_spo("download", "someorg/nothing-here", env=hub_env(hub, tmp_path))
    assert r.returncode == 1, r.stderr
    text = assert_one_paragraph(r.stderr)
    assert "not found" in text and "someorg/nothing-here" in text
    assert not hub.downloads


def test_unknown_revision(repos, tmp_path):
    with HubServer(repos) as hub:
        r = run_spo("download", "base", "--revision", "v9", env=hub_env(hub, tmp_path))
    assert r.returncode == 1, r.stderr
    text = assert_one_paragraph(r.stderr)
    assert "revision" in text and "does not exist" in text
    assert not hub.downloads


def test_download_shows_progress_per_repo(repos, tmp_path):
    with HubServer(repos) as hub:
        r = run_spo("download", "spo-lora", env=hub_env(hub, tmp_path / "a"))
        quiet = run_spo("download", "spo-lora", "--quiet", env=hub_env(hub, tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    for repo in (BASE, LORA, VAE):
        assert f"Downloading {repo}" in r.stderr, r.stderr
    assert "ready for offline use" in r.stderr and str(tmp_path / "a" / "hub") in r.stdout
    assert quiet.returncode == 0, quiet.stderr
    assert "Downloading" not in quiet.stderr


def test_vae_from_a_subfolder_works_offline_after_download(repos, tmp_path):
    """A --vae repo with only vae/config.json: offline, the cache miss of config.json must not stop the
    look-up before vae/config.json (fixed in resolve.hub.pin)."""
    import shutil

    folder = tmp_path / "pipe-vae"
    (folder / "vae").mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(repos[VAE] / name, folder / "vae" / name)
    with HubServer({BASE: repos[BASE], "someorg/pipe-vae": folder}) as hub:
        env = hub_env(hub, tmp_path)
        online = run_spo("download", "base", "--vae", "someorg/pipe-vae", "--json", env=env)
        assert online.returncode == 0, online.stderr
        assert hub.fetched("someorg/pipe-vae") == {"vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
        seen = len(hub.requests)
        offline = run_spo("download", "base", "--vae", "someorg/pipe-vae", "--json",
                          env={**env, "HF_HUB_OFFLINE": "1"})
        assert hub.requests[seen:] == []
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["repos"] == json.loads(online.stdout)["repos"]


# ---------------------------------------------------------------------------------------------
# A known bug in src: fails today, passes once fixed (then drop the marker).


def test_download_progress_counts_bytes(repos, tmp_path):
    with HubServer(repos) as hub:
        r = run_spo("download", "base", env=hub_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if f"Downloading {BASE}" in ln)
    # About 5.6 MB of fp16 weights and configs: rich's DownloadColumn shows it in MB, not "18/18 bytes".
    assert "MB" in line, line


def test_offline_fp32_after_fp16_download_says_what_to_fetch(repos, tmp_path):
    with HubServer(repos) as hub:
        env = hub_env(hub, tmp_path)
        online = run_spo("download", "base", env=env)  # fp16 files only
        assert online.returncode == 0, online.stderr
        offline = run_spo("download", "base", "--dtype", "fp32", env={**env, "HF_HUB_OFFLINE": "1"})
    # `spo download` offline: it cannot fetch, and must not tell the user to run itself.
    assert offline.returncode == 1, offline.stdout
    text = assert_one_paragraph(offline.stderr)
    assert BASE in text and "HF_HUB_OFFLINE is set" in text and "Unset HF_HUB_OFFLINE to download" in text
    assert "run `spo download" not in text
    # A CPU run offline names the download that fetches the float32 files.
    gen = run_spo("generate", "a cat", "--model", "base", "--device", "cpu", "--steps", "2", "--width", "64",
                  "--height", "64", "--out", str(tmp_path / "o"), env={**env, "HF_HUB_OFFLINE": "1"})
    assert gen.returncode == 1 and "spo download base --dtype fp32" in assert_one_paragraph(gen.stderr)

@pytest.mark.parametrize("changes, words", [
    ({"_class_name": "StableDiffusionPipeline"}, "is a StableDiffusionPipeline, not an SDXL pipeline"),
    ({"_class_name": ["pipeline", "MyPipeline"]}, "needs custom Python code from the repository"),
])
def test_a_foreign_repo_is_refused_before_any_weight_is_fetched(repos, tmp_path, changes, words):
    with HubServer({**repos, "someorg/other": base_copy(repos, tmp_path / "foreign", **changes)}) as hub:
        for command in (["download", "someorg/other"],
                        ["generate", "a cat", "--model", "someorg/other", "--device", "cpu", "--out", str(tmp_path / "o")]):
            r = run_spo(*command, env=hub_env(hub, tmp_path))
            assert r.returncode == 1, r.stderr
            text = assert_one_paragraph(r.stderr)
            assert words in text and "trust_remote_code" not in text
        assert hub.files_requested("someorg/other") == {"model_index.json"}  # and nothing else


def test_download_force_repairs_a_damaged_cache(repos, tmp_path):
    with HubServer(repos) as hub:
        env = hub_env(hub, tmp_path)
        assert run_spo("download", "base", "--dtype", "fp32", env=env).returncode == 0
        [unet] = (tmp_path / "hub").glob("models--*base*/snapshots/*/unet/diffusion_pytorch_model.safetensors")
        blob = unet.resolve()
        data = blob.read_bytes()
        blob.write_bytes(data[: len(data) // 3])  # a copy cut short
        offline = {**env, "HF_HUB_OFFLINE": "1"}
        gen = ["generate", "a cat", "--model", "base", "--device", "cpu", "--width", "64", "--height", "64",
               "--steps", "2", "--out", str(tmp_path / "o"), "--quiet"]
        broken = run_spo(*gen, env=offline)
        assert broken.returncode == 1
        text = assert_one_paragraph(broken.stderr)
        assert f"The copy of '{BASE}' on this machine is damaged: unet/diffusion_pytorch_model.safetensors" in text
        assert "Repair it with `spo download base --dtype fp32 --force`" in text
        hub.reset()
        repair = run_spo("download", "base", "--dtype", "fp32", "--force", env=env)
        assert repair.returncode == 0, repair.stderr
        assert "unet/diffusion_pytorch_model.safetensors" in hub.files_requested(BASE)
        # The snapshot's file is whole again, byte for byte (what `generate` reads through the link).
        assert unet.resolve().read_bytes() == data


@pytest.mark.parametrize("endpoint, words", [("http://127.0.0.1:9", "127.0.0.1:9 refused the connection"),
                                             ("http://no-such-host.invalid", "does not resolve")])
def test_download_without_a_network_says_why_in_one_line(tmp_path, endpoint, words):
    r = run_spo("download", "spo", env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint,
                                        "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 1
    text = assert_one_paragraph(r.stderr)
    assert f"The Hugging Face Hub at {endpoint} cannot be reached: " in text and words in text
    assert "Retrying" not in r.stderr and "spo download spo` first" not in text


def test_doctor_without_a_model_or_a_network_is_not_green(tmp_path):
    r = run_spo("doctor", "--json", env={"HF_HUB_CACHE": str(tmp_path / "empty")})  # offline, nothing cached
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["problems"] and "no model to run" in report["problems"][0]
    assert "spo download spo" in report["next_step"]


@pytest.mark.parametrize("names, words", [
    ((), "'someorg/loras' holds 0 .safetensors files; say which with --lora-file."),
    (("a.safetensors", "b.safetensors"),
     "'someorg/loras' holds 2 .safetensors files; say which with --lora-file. Files: a.safetensors, b.safetensors."),
    (("only.safetensors",), None),
])
def test_a_lora_repo_named_without_lora_file_is_asked_for_its_safetensors(repos, tmp_path, names, words):
    """Online, --lora without --lora-file takes the repo's one .safetensors file, and refuses a repo
    with none or several (naming them) before fetching any."""
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "README.md").write_text("LoRAs")
    for name in names:
        shutil.copy(repos[LORA] / presets.SPO_LORA_FILE, folder / name)
    with HubServer({"someorg/loras": folder}) as hub:  # the model is a local folder: only the LoRA is fetched
        r = run_spo("download", str(repos[BASE]), "--dtype", "fp32", "--lora", "someorg/loras", "--json",
                    env=hub_env(hub, tmp_path))
    if words is None:
        assert r.returncode == 0, r.stderr
        [lora] = [row for row in json.loads(r.stdout)["repos"] if row["id"] == "someorg/loras"]
        assert (lora["file"], lora["commit"]) == ("only.safetensors", hub.commits["someorg/loras"])
        assert hub.fetched("someorg/loras") == {"only.safetensors"}
    else:
        assert r.returncode == 2, r.stderr
        assert words in assert_one_paragraph(r.stderr)
        assert not hub.downloads
