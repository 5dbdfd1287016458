"""C2PA Content Credentials (--sign): the manifest read back with the SDK's own Reader, a tampered file,
the parent of an image-to-image, the key and certificate checks through the real CLI, the local
certificate, and the write order (no image on disk without its manifest)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

c2pa = pytest.importorskip("c2pa")

from spo_cli.cli import app  # noqa: E402
from spo_cli.outputs import credentials, files  # noqa: E402

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
META = {"schema": "spo-cli/1", "prompt": "a fox", "negative_prompt": None, "seed": 7, "steps": 2, "guidance": 5.0,
        "width": 32, "height": 32, "scheduler": {"class": "EulerDiscreteScheduler", "a1111": "Euler"},
        "model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", "commit": "a" * 40},
        "versions": {"spo-cli": "0.1.0"}}


def pair_files(folder: Path, name: str, **kw) -> tuple[str, str]:
    """A key file and a chain file from credentials.make_local_pair (kw: now, days)."""
    key, chain = credentials.make_local_pair(**kw)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.key").write_bytes(key)
    (folder / f"{name}.pem").write_bytes(chain)
    return str(folder / f"{name}.key"), str(folder / f"{name}.pem")


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    key, cert = pair_files(tmp_path_factory.mktemp("creds"), "mine")
    return credentials.signer_from_options(True, key, cert)


def write(out: Path, fmt: str, signer, meta=META, stem="img") -> Path:
    written = files.write_pair(out, stem, fmt, Image.new("RGB", (32, 32), (200, 40, 10)), meta, signer=signer)
    return Path(written["image"])


def read_back(path: Path):
    with open(path, "rb") as f:
        reader = c2pa.Reader(credentials.MIME[path.suffix[1:]], f)
        return reader.get_validation_state(), json.loads(reader.json())


# -- what the manifest says, read with the SDK ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_signed_image_reads_back_with_the_sdk(tmp_path, signer, fmt):
    path = write(tmp_path, fmt, signer)
    state, store = read_back(path)
    active = store["manifests"][store["active_manifest"]]
    # Valid, and the one status is the untrusted signer (a certificate on no trust list).
    assert state == "Valid" and [s["code"] for s in store["validation_status"]] == ["signingCredential.untrusted"]
    (actions,) = [a["data"]["actions"] for a in active["assertions"] if a["label"] == "c2pa.actions.v2"]
    assert [(a["action"], a.get("digitalSourceType")) for a in actions] == [("c2pa.created", TRAINED)]
    assert actions[0]["softwareAgent"]["name"] == "spo-cli"
    assert active["claim_generator_info"][0]["name"] == "spo-cli"
    (recipe,) = [a["data"] for a in active["assertions"] if a["label"] == credentials.RECIPE_LABEL]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert recipe["model"] == {"id": META["model"]["id"], "commit": META["model"]["commit"]}
    assert recipe["recipe_sha256"] == credentials.recipe_hash(sidecar)
    # The sidecar says which certificate signed, never the key.
    assert sidecar["c2pa"]["cert_sha256"] == signer.sha256 and sidecar["c2pa"]["local_certificate"] is False
    for f in (path, path.with_suffix(".json")):
        assert b"PRIVATE KEY" not in f.read_bytes()
    assert files.image_is_whole(path)  # a resume takes a signed image as finished


def test_probe_says_untrusted_for_a_local_certificate_and_what_was_signed(tmp_path, signer):
    got = credentials.probe(write(tmp_path, "png", signer))
    assert got["present"] and got["state"] == "untrusted" and got["reasons"] == []
    # No trust list is checked (spo loads none): the words say so, not that the signer is on none.
    assert got["summary"] == credentials.LOCAL_WORDS and "vouches for no person" in got["summary"]
    assert (got["action"], got["digital_source_type"]) == ("c2pa.created", TRAINED)
    assert got["recipe"]["model"]["commit"] == "a" * 40 and got["recipe_matches"] is True
    assert got["signer"]["common_name"].startswith("spo-cli")


def _issued_pair(folder: Path, org: str, key=None) -> tuple[str, str]:
    """A key and chain (end-entity, then its CA) from a CA of organisation `org`, as a user's own CA
    would issue it; `key` (default P-256) is the end-entity's key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), key or ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])

    def usage(ca):
        return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    def cert(subject, public, ca):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
             .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
             .not_valid_after(now + timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
             .add_extension(usage(ca), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                critical=False))
        return b.sign(ca_key, hashes.SHA256())

    root = cert(ca_name, ca_key.public_key(), True)
    leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Jo Example"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]), key.public_key(), False)
    pem = serialization.Encoding.PEM
    (folder / "user.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (folder / "user.pem").write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    return str(folder / "user.key"), str(folder / "user.pem")


def test_the_root_is_not_embedded_and_intermediates_are(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    key, cert = pair_files(tmp_path, "local")  # spo's local pair: end-entity certificate, then its root
    leaf, root = x509.load_pem_x509_certificates(Path(cert).read_bytes())
    signed = write(tmp_path, "png", credentials.signer_from_options(True, key, cert)).read_bytes()
    # C2PA 2.2 §14.5: the trust anchor should not be in x5chain; a validator holds its own.
    assert leaf.public_bytes(Encoding.DER) in signed and root.public_bytes(Encoding.DER) not in signed
    assert credentials._without_anchor([leaf]) == [leaf]  # a lone end-entity certificate is kept
    assert credentials._without_anchor([leaf, leaf]) == [leaf, leaf]  # same names as a root would have, not one


def test_a_users_certificate_is_named_and_no_trust_list_is_claimed(tmp_path):
    signer = credentials.signer_from_options(True, *_issued_pair(tmp_path, "Example Org"))
    got = credentials.probe(write(tmp_path, "png", signer))
    assert got["state"] == "untrusted" and got["reasons"] == []
    assert got["summary"].startswith(credentials.VALID_WORDS)
    assert '"Jo Example" of "Example Org"' in got["summary"]
    assert got["signer"] == {"common_name": "Jo Example", "organization": "Example Org", "alg": "Es256"}
    assert "checks no trust list" in got["summary"] and "local" not in got["summary"]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_byte_changed_in_the_image_data_fails_validation(tmp_path, signer, fmt):
    path = write(tmp_path, fmt, signer)
    data = bytearray(path.read_bytes())
    # A byte of the compressed pixels: in the IDAT chunk, or after the JPEG's start-of-scan.
    at = data.index(b"IDAT") + 12 if fmt == "png" else data.index(b"\xff\xda") + 20
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    got = credentials.probe(path)
    assert got["present"] and got["state"] == "invalid"
    assert any(r.startswith("assertion.dataHash.mismatch") for r in got["reasons"]), got["reasons"]


def test_a_damaged_manifest_or_a_cut_file_is_invalid_not_absent(tmp_path, signer):
    path = write(tmp_path, "png", signer)
    data = path.read_bytes()
    signature = bytearray(data)
    signature[data.index(b"c2pa.signature") + 40] ^= 0xFF
    (tmp_path / "sig.png").write_bytes(bytes(signature))
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    for name in ("sig.png", "cut.png"):
        got = credentials.probe(tmp_path / name)
        assert got["present"] and got["state"] == "invalid" and got["reasons"], (name, got)


def test_the_recipe_hash_catches_an_edited_sidecar(tmp_path, signer):
    path = write(tmp_path, "jpg", signer)  # a JPEG: its spo metadata is the sidecar beside it
    sidecar = path.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace('"seed": 7', '"seed": 8'))
    got = credentials.probe(path)
    assert got["state"] == "untrusted" and got["recipe_matches"] is False
    assert got["summary"].endswith("is not the signed recipe (its hash differs): it was changed after signing.")


def test_an_unsigned_image_has_no_manifest(tmp_path):
    got = credentials.probe(write(tmp_path, "png", None))
    assert got == {"present": False, "checked": True, "summary": "No C2PA manifest."}
    assert credentials.probe(tmp_path / "img.json")["present"] is False  # not an image at all


def test_image_to_image_records_its_signed_parent(tmp_path, signer):
    parent = write(tmp_path / "first", "png", signer)
    digest = hashlib.sha256(parent.read_bytes()).hexdigest()
    meta = dict(META, init_image={"path": str(parent), "sha256": digest, "width": 32, "height": 32,
                                  "bytes": parent.stat().st_size})
    child = write(tmp_path / "second", "png", signer, meta)
    got = credentials.probe(child)
    assert got["state"] == "untrusted", got["reasons"]
    _, store = read_back(child)
    active = store["manifests"][store["active_manifest"]]
    (actions,) = [a["data"]["actions"] for a in active["assertions"] if a["label"] == "c2pa.actions.v2"]
    (link,) = actions[0]["parameters"]["ingredients"]  # c2pa.opened points at the parentOf ingredient
    assert link["url"].endswith(active["ingredients"][0]["label"])
    assert got["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert (got["action"], got["digital_source_type"]) == ("c2pa.edited", COMPOSITE)
    assert got["parents"] == [{"title": parent.name, "manifest": True}]
    assert got["recipe"]["init_image_sha256"] == digest
    # A parent that is gone or changed is not recorded as the ingredient; the edit is still declared.
    moved = dict(meta, init_image=dict(meta["init_image"], sha256="0" * 64))
    got = credentials.probe(write(tmp_path / "third", "png", signer, moved))
    assert (got["actions"], got["digital_source_type"], got["parents"]) == (["c2pa.created"], COMPOSITE, [])


# -- the write: signed in memory, then written once -------------------------------------------------


def test_the_first_bytes_on_disk_are_already_signed(tmp_path, signer, monkeypatch):
    seen = []
    real = files.atomic_write

    def spy(path, data, **kw):
        seen.append((Path(path).suffix, data))
        return real(path, data, **kw)

    monkeypatch.setattr(files, "atomic_write", spy)
    write(tmp_path, "png", signer)
    assert [s for s, _ in seen] == [".png", ".json"]
    reader = c2pa.Reader("image/png", io.BytesIO(seen[0][1]))
    assert reader.get_active_manifest() is not None


def test_a_run_killed_while_signing_leaves_no_image(tmp_path, signer, monkeypatch):
    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(signer, "_sign", killed)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, "png", signer)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no image, no sidecar, no temporary file


def test_a_signing_failure_is_a_write_error_and_leaves_nothing(tmp_path, signer, monkeypatch):
    from spo_cli.errors import OutputError

    def broken(*a):
        raise c2pa.C2paError("Signature: boom")

    monkeypatch.setattr(signer, "_sign", broken)
    with pytest.raises(OutputError, match="could not be signed with C2PA"):
        write(tmp_path, "png", signer)
    assert list(tmp_path.iterdir()) == []


def test_a_grid_page_is_signed_as_a_composite_and_its_record_hashed(tmp_path, signer):
    from test_grid import fake_comparison

    from spo_cli import comparison
    from spo_cli.outputs import metadata

    columns, rows, cells_dir = fake_comparison(tmp_path, 2, 2, (32, 32))
    (page,) = comparison.write_grids(tmp_path / "out", "g", columns, rows, cells_dir, 64, 8, index_name="g-grid.json",
                                     signer=signer)
    got = credentials.probe(page)
    assert (got["state"], got["action"], got["digital_source_type"]) == ("untrusted", "c2pa.created", COMPOSITE)
    shown = [f"cells/{c.folder}/{r.stem}.png" for r in rows for c in columns]
    assert got["recipe"]["grid_sha256"] == credentials.recipe_hash(metadata.grid_record("g-grid.json", shown))


def test_unsigned_writes_are_unchanged(tmp_path):
    path = write(tmp_path, "png", None)
    assert "c2pa" not in json.loads(path.with_suffix(".json").read_text())
    assert b"caBX" not in path.read_bytes()  # PNG's C2PA chunk


# -- the local certificate --------------------------------------------------------------------------


def test_the_local_certificate_is_made_once_private_and_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)
    monkeypatch.delenv(credentials.CERT_ENV, raising=False)
    first = credentials.signer_from_options(True, None, None)
    folder = tmp_path / "config" / "spo-cli" / "c2pa"
    assert stat.S_IMODE(os.stat(folder / "signer.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert first.local and credentials.signer_from_options(True, None, None).sha256 == first.sha256
    assert "PRIVATE" not in repr(first) and "PRIVATE" not in json.dumps(first.record())
    # The local root's key was thrown away: the chain's second certificate is a CA with no key on disk.
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["signer.key", "signer.pem"]


def test_a_damaged_local_certificate_says_where_it_is_and_how_to_remake_it(tmp_path, monkeypatch):
    from spo_cli.errors import UsageError

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    credentials.local_credentials()
    (tmp_path / "config" / "spo-cli" / "c2pa" / "signer.pem").write_text("damaged\n")
    with pytest.raises(UsageError) as e:
        credentials.signer_from_options(True, None, None)
    assert "(spo's local certificate) is not PEM" in e.value.paragraph()
    assert "remove that folder and spo makes a new one" in e.value.paragraph()


def test_serve_sign_hands_the_signer_to_the_worker(hub_cache, signer, tmp_path):
    from spo_cli.cli import serve
    from spo_cli.cli.ui import UI

    server = serve.build(UI(quiet=True), ["spo"], port=0, out=str(tmp_path / "out"), signer=signer)
    try:
        assert server.worker.signer is signer
    finally:
        server.sock.close()


def test_the_environment_names_the_key_and_certificate(tmp_path, monkeypatch):
    key, cert = pair_files(tmp_path, "env")
    monkeypatch.setenv(credentials.KEY_ENV, key)
    monkeypatch.setenv(credentials.CERT_ENV, cert)
    signer = credentials.signer_from_options(True, None, None)
    assert not signer.local


# -- bad keys and certificates: exit 2, one paragraph, before any model loads -----------------------


def _secp256k1_key(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256K1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def _self_signed(folder: Path) -> tuple[str, str]:
    """A self-signed end-entity certificate: well-formed, matching, in date, and refused by c2pa-rs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "me")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "self.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (folder / "self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(folder / "self.key"), str(folder / "self.pem")


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    good_key, good_cert = pair_files(tmp, "good")
    other_key, _ = pair_files(tmp, "other")
    _, old_cert = pair_files(tmp, "old", now=datetime.now(timezone.utc) - timedelta(days=30), days=2)
    old_key = str(tmp / "old.key")
    _, early_cert = pair_files(tmp, "early", now=datetime.now(timezone.utc) + timedelta(days=30))
    (tmp / "junk.pem").write_text("hello\n")
    self_key, self_cert = _self_signed(tmp)
    return {
        "missing key": (["--sign-key", str(tmp / "nope.key"), "--sign-cert", good_cert],
                        "nope.key (--sign-key) does not exist"),
        "key not PEM": (["--sign-key", str(tmp / "junk.pem"), "--sign-cert", good_cert], "is not PEM"),
        "cert not PEM": (["--sign-key", good_key, "--sign-cert", str(tmp / "junk.pem")], "is not PEM"),
        "mismatch": (["--sign-key", other_key, "--sign-cert", good_cert], "does not match the signing key"),
        "expired": (["--sign-key", old_key, "--sign-cert", old_cert], "expired on"),
        "not yet valid": (["--sign-key", str(tmp / "early.key"), "--sign-cert", early_cert], "is not valid before"),
        "key type": (["--sign-key", _secp256k1_key(tmp / "k1.key"), "--sign-cert", good_cert],
                     "is an EC key on secp256k1, which C2PA cannot sign with"),
        "refused by the SDK": (["--sign-key", self_key, "--sign-cert", self_cert],
                               "The C2PA SDK refused to sign with the certificate"),
        "key without cert": (["--sign-key", good_key], "--sign-key (or SPO_SIGN_KEY) is set without --sign-cert"),
    }


CASES = ["missing key", "key not PEM", "cert not PEM", "mismatch", "expired", "not yet valid", "key type",
         "refused by the SDK", "key without cert"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _cases(tmp_path_factory.mktemp("bad"))


def _refused(r, words: str, out: Path) -> None:
    text = " ".join(r.stderr.split())
    assert r.exit_code == 2, r.output
    assert words in text, text
    assert "Traceback" not in r.output and "Loading" not in r.stderr
    assert "error: " in r.stderr and "\n\n" not in r.stderr[r.stderr.index("error: "):].strip()  # one paragraph
    assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_key_or_certificate_is_refused_before_anything_loads(cases, tmp_path, case, monkeypatch):
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)
    monkeypatch.delenv(credentials.CERT_ENV, raising=False)
    args, words = cases[case]
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["generate", "a fox", "--sign", *args, "--out", str(out)])
    _refused(r, words, out)


@pytest.mark.parametrize("command", [["batch", "prompts.txt"], ["compare", "a fox", "--base", "--spo"],
                                     ["eval", "prompts.txt"],
                                     ["replay", "--infotext", "a fox\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 1, "
                                      "Size: 64x64"], ["serve"]])
def test_every_command_that_writes_images_checks_the_key(cases, tmp_path, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a fox\n")
    args, words = cases["mismatch"]
    out = tmp_path / "out"
    r = CliRunner().invoke(app, [*command, "--sign", *args, "--out", str(out)])
    _refused(r, words, out)


def test_sign_key_without_sign_is_refused(cases, tmp_path):
    out = tmp_path / "out"
    args, _ = cases["mismatch"]
    r = CliRunner().invoke(app, ["generate", "a fox", *args, "--out", str(out)])
    _refused(r, "--sign-key and --sign-cert given without --sign", out)


def test_a_missing_extra_gives_the_pip_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "c2pa", None)  # as if c2pa-python were not installed
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["generate", "a fox", "--sign", "--out", str(out)])
    _refused(r, 'pip install "spo-cli[c2pa]"', out)
    got = credentials.probe(tmp_path / "x.png")
    assert got["present"] is False and got["checked"] is False and "spo-cli[c2pa]" in got["summary"]


# -- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_sign_end_to_end(hub_cache, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["generate", "a fox", "--width", "64", "--height", "64", "--steps", "2",
                                 "--device", "cpu", "--seed", "3", "--sign", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    (written,) = json.loads(r.stdout)
    got = credentials.probe(Path(written["image"]))
    assert (got["state"], got["action"], got["digital_source_type"]) == ("untrusted", "c2pa.created", TRAINED)
    sidecar = json.loads(Path(written["sidecar"]).read_text())
    assert got["recipe_matches"] is True and got["recipe"]["model"]["commit"] == sidecar["model"]["commit"]
    assert sidecar["c2pa"]["local_certificate"] is True and "spec_hash" not in got["recipe"]
    # Replay reads a signed image; signing is not part of the recipe: without --sign, no manifest.
    again = tmp_path / "again"
    r = CliRunner().invoke(app, ["replay", written["image"], "--device", "cpu", "--json", "--out", str(again)])
    assert r.exit_code == 0, r.output
    (replayed,) = json.loads(r.stdout)
    assert credentials.probe(Path(replayed["image"]))["present"] is False
    assert "c2pa" not in json.loads(Path(replayed["sidecar"]).read_text())
    assert Image.open(replayed["image"]).tobytes() == Image.open(written["image"]).tobytes()


@pytest.mark.slow
def test_batch_and_compare_sign_and_a_resume_keeps_signed_images(hub_cache, tmp_path):
    from spo_cli import presets

    tiny = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]
    (tmp_path / "p.txt").write_text("a fox\n")
    out = tmp_path / "batch"
    r = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), *tiny, "--sign", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    (image,) = out.glob("*.png")
    got = credentials.probe(image)
    assert got["state"] == "untrusted" and got["recipe"]["spec_hash"] == json.loads(
        image.with_suffix(".json").read_text())["spec_hash"]
    # Signing is metadata only: the same recipe without --sign finds the image finished and keeps it.
    before = image.read_bytes()
    r = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), *tiny, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert image.read_bytes() == before
    r = CliRunner().invoke(app, ["compare", "a fox", *tiny, "--seeds", "1", "--no-base", "--no-spo", "--model",
                                 presets.SDXL_BASE, "--sign", "--out", str(tmp_path / "cmp"), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    (cell,) = (tmp_path / "cmp" / "cells").glob("*/*.png")
    assert credentials.probe(cell)["action"] == "c2pa.created"
    (page,) = (tmp_path / "cmp").glob("*-grid.png")
    got = credentials.probe(page)
    assert (got["state"], got["digital_source_type"]) == ("untrusted", COMPOSITE)


@pytest.mark.slow
def test_eval_signs_the_cells_it_writes(hub_cache, tmp_path):
    from spo_cli import tiny
    from spo_cli.scores import tiny as score_tiny

    for repo, src in score_tiny.save_repos(tmp_path / "score-repos").items():  # eval scores what it makes
        tiny.add_to_cache(Path(os.environ["HF_HUB_CACHE"]), repo, src)
    (tmp_path / "p.txt").write_text("a fox\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "p.txt"), "--seeds", "0", "--width", "64", "--height", "64",
                                 "--steps", "1", "--device", "cpu", "--metric", "aesthetic", "--sign", "--json",
                                 "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cells = sorted((out / "cells").rglob("*.png"))
    assert len(cells) == 2
    for cell in cells:
        got = credentials.probe(cell)
        assert (got["state"], got["action"], got["recipe_matches"]) == ("untrusted", "c2pa.created", True)


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "p384"])
def test_rsa_ed25519_and_p384_keys_sign_and_validate(tmp_path, kind):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = {"rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
           "ed25519": ed25519.Ed25519PrivateKey.generate, "p384": lambda: ec.generate_private_key(ec.SECP384R1())}[kind]()
    signer = credentials.signer_from_options(True, *_issued_pair(tmp_path, "Example Org", key))
    got = credentials.probe(write(tmp_path, "jpg", signer))
    assert got["state"] == "untrusted" and got["reasons"] == [], got
    assert got["signer"]["alg"].lower() == {"rsa": "ps256", "ed25519": "ed25519", "p384": "es384"}[kind]


def test_the_c2pa_sdk_reads_its_manifest_not_the_xmp_mark(tmp_path):
    # What the docs say: the XMP source type is for exiftool and platforms; C2PA readers see only a manifest.
    unsigned = write(tmp_path, "png", None, dict(META, provenance={"xmp": True, "digital_source_type": TRAINED}))
    assert b"Iptc4xmpExt:DigitalSourceType" in unsigned.read_bytes()
    with open(unsigned, "rb") as f, pytest.raises(c2pa.C2paError):
        c2pa.Reader("image/png", f)  # no manifest: the XMP mark is not one
