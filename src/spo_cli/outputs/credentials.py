"""C2PA Content Credentials: a signed manifest in each image that says a model made it.

The manifest (built with the C2PA's own SDK, c2pa-python over c2pa-rs) holds:
- `c2pa.actions.v2`: `c2pa.created` with IPTC's digitalSourceType `trainedAlgorithmicMedia` and
  spo-cli as the softwareAgent; for image-to-image, `c2pa.opened` (the parent image, a parentOf
  ingredient, its own manifest kept when it has one) then `c2pa.edited` with
  `compositeWithTrainedAlgorithmicMedia` (the C2PA rule: the first action is `created` or
  `opened`, and an asset made from another is an edit of it);
- `org.spo-cli.recipe`: the model (repo id, commit, file hash) and `recipe_sha256`, the SHA-256 of
  the sidecar's canonical JSON (`recipe_hash`). That, not spec_hash, is what the signature binds:
  spec_hash is spo's resume identity (batch and compare only, a truncated hash of settings whose
  make-up changes between versions), while the sidecar hash covers the whole record (prompt, seed,
  every setting, model commit, versions) and anyone can recompute it from the sidecar or the PNG's
  `spo-cli` chunk with sha256 and a JSON library. spec_hash rides along when there is one.

Signing is metadata only: it never enters spec_hash, and a resume treats signed and unsigned
images alike. The sidecar records that the image was signed, and by which certificate (subject and
SHA-256 fingerprint), never the key.

Credentials: the user's key and certificate chain (--sign-key/--sign-cert or SPO_SIGN_KEY /
SPO_SIGN_CERT), or a local pair that spo makes on first use under $XDG_CONFIG_HOME/spo-cli/c2pa/.
c2pa-rs refuses a self-signed end-entity certificate, so the local pair is an end-entity
certificate issued by a one-off local root whose key is thrown away once it has signed: nothing on
disk can issue more certificates. Such a manifest is valid (signature and hashes check out), but
its certificate vouches for no one, and `probe` says exactly that. `probe` loads no trust list (c2pa-rs
has none built in), so for any certificate it reports a valid manifest and the signer's name as the
certificate gives it, never "trusted".

Everything about the key and certificate is checked by `signer_from_options` before a model loads
(exit 2, one paragraph), ending with one trial signing of a tiny in-memory PNG: c2pa-rs applies its
own certificate profile at signing time, and the trial is the one sure check of it (about 10 ms).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import threading
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from spo_cli import __version__
from spo_cli.errors import OutputError, UsageError

EXTRA = "c2pa"
SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = SOURCE_TYPES + "trainedAlgorithmicMedia"
COMPOSITE = SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
RECIPE_LABEL = "org.spo-cli.recipe"
MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
KEY_ENV, CERT_ENV = "SPO_SIGN_KEY", "SPO_SIGN_CERT"
PEM_MAX_BYTES = 1 << 20  # a key or a chain of a few certificates is a few kB
PARENT_MAX_BYTES = 256 << 20  # the parent image read into the manifest as an ingredient
PROBE_MAX_BYTES = 256 << 20  # the largest file `probe` reads (spo's largest images are tens of MB)
LOCAL_DAYS = 3650
LOCAL_DIR = ("spo-cli", "c2pa")
LOCAL_KEY, LOCAL_CERT = "signer.key", "signer.pem"
UNTRUSTED = "signingCredential.untrusted"
LOCAL_ORG = "spo-cli local certificate (untrusted)"  # the O= of spo's local pair, how `probe` tells it
VALID_WORDS = "Valid: the signature checks out and the image is unchanged since it was signed"
# c2pa-rs reports signingCredential.untrusted for every signer when no trust anchors are loaded, and
# spo loads none: the summary says that no trust list was checked, not that the signer is on none.
LOCAL_WORDS = (VALID_WORDS + ", with a certificate that names itself spo-cli's local one: made on one machine, "
               "it vouches for no person or organisation.")
SIGNER_WORDS = (VALID_WORDS + ", by {signer}. spo inspect checks no trust list, so that name is only what the "
                "certificate says; https://contentcredentials.org/verify checks it against the C2PA trust list.")
# What the SDK reads: never a remote manifest or an OCSP responder named by a file it is shown.
_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
             "builder": {"thumbnail": {"enabled": False}}}  # the image itself is its own preview
_CERT_HINT = ("C2PA needs an end-entity certificate (not a CA) with the digitalSignature key usage and an "
              "extended key usage such as emailProtection or documentSigning, issued by a CA whose certificate "
              "follows it in the --sign-cert file.")


def pip_hint() -> str:
    return f'Install the extra: pip install "spo-cli[{EXTRA}]".'


def _require() -> None:
    from spo_cli import extras

    extras.require(EXTRA, "Signing with C2PA Content Credentials (--sign)", "c2pa", "cryptography")


# ---------------------------------------------------------------------------------------------
# Reading and checking the key and certificate


def _read_pem(path: Path, what: str, option: str) -> bytes:
    where = f"{what} {path} ({option})"
    try:
        if not path.is_file():
            raise UsageError(f"The {where} {'is not a file' if path.exists() else 'does not exist'}.",
                             "Give the path of a PEM file, or leave out --sign-key and --sign-cert to sign with "
                             "spo's local certificate.")
        if path.stat().st_size > PEM_MAX_BYTES:
            raise UsageError(f"The {where} is over {PEM_MAX_BYTES >> 20} MiB: not a PEM {what}.",
                             "Give the PEM file itself.")
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"The {where} cannot be read ({e.strerror or e}).",
                         "Check its permissions.") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"The {where} is not PEM (no -----BEGIN line).",
                         f"Give a PEM file; convert DER with: openssl {'pkey' if what == 'key' else 'x509'} "
                         f"-inform der -in FILE -out FILE.pem.")
    return data


def _algorithm(key, where: str) -> str:
    """The C2PA signing algorithm for a private key, or a UsageError for one C2PA cannot use."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name)
        if alg:
            return alg
        kind = f"an EC key on {key.curve.name}"
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size >= 2048:
            return "ps256"
        kind = f"a {key.key_size}-bit RSA key"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    else:
        kind = f"a {type(key).__name__.lstrip('_')}"
    raise UsageError(f"The signing key {where} is {kind}, which C2PA cannot sign with.",
                     "Use an EC key on P-256, P-384 or P-521 (ES256/384/512), an RSA key of 2048 bits or more "
                     "(PS256) or an Ed25519 key.")


def _load_key(data: bytes, where: str):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(data, password=None)
    except TypeError:  # the key is encrypted
        raise UsageError(f"The signing key {where} is encrypted with a password, which spo cannot ask for.",
                         "Give an unencrypted copy kept private (mode 0600): openssl pkey -in KEY -out KEY.plain."
                         ) from None
    except Exception as e:  # ValueError for a damaged key; cryptography's UnsupportedAlgorithm is not one
        raise UsageError(f"The signing key {where} is not a private key spo can read ({_first_line(e)}).",
                         "Give a PEM private key (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY).") from None


def _load_chain(data: bytes, where: str) -> list:
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise UsageError(f"The certificate {where} holds no certificate spo can read ({_first_line(e)}).",
                         "Give the signing certificate in PEM, followed by its issuers'.") from None
    return chain


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _check(key, chain: list, key_where: str, cert_where: str, now: datetime) -> str:
    """The checks that need no SDK: the key's type, that the first certificate is the key's, and its
    dates. Returns the signing algorithm."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    alg = _algorithm(key, key_where)
    leaf = chain[0]
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise UsageError(f"The certificate {cert_where} does not match the signing key {key_where}: its public key "
                         "is another key's.",
                         "Give the certificate issued for this key (first in the file), or the key it was issued for.")
    for cert in chain:
        name = "its signing certificate" if cert is leaf else f"the issuer certificate {cert.subject.rfc4514_string()}"
        if cert.not_valid_after_utc < now:
            raise UsageError(f"The certificate {cert_where}: {name} expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC.",
                             "Renew it, or leave out --sign-key and --sign-cert to sign with spo's local certificate.")
        if cert.not_valid_before_utc > now:
            raise UsageError(f"The certificate {cert_where}: {name} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.",
                             "Check this machine's clock, or use a certificate valid now.")
    return alg


def _without_anchor(chain: list) -> list:
    """The certificates to embed: the end-entity one and its intermediates. C2PA 2.2 §14.5 (x5chain):
    the trust anchor's (root) certificate "should not be included", since a validator trusts only the
    anchors it holds; a trailing self-signed certificate is that root. The end-entity one always stays."""
    chain = list(chain)
    while len(chain) > 1 and chain[-1].subject == chain[-1].issuer:
        try:
            chain[-1].verify_directly_issued_by(chain[-1])
        except Exception:  # same names, but not self-signed: not a root, keep it
            break
        chain.pop()
    return chain


def fingerprint(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


# ---------------------------------------------------------------------------------------------
# spo's local certificate


def local_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).joinpath(*LOCAL_DIR)


def local_credentials() -> tuple[Path, Path]:
    """spo's own key and certificate chain, made on first use (under a lock, so two first runs make
    one pair). The key file is 0600 in a 0700 folder."""
    from filelock import FileLock

    folder = local_dir()
    key_path, cert_path = folder / LOCAL_KEY, folder / LOCAL_CERT
    if key_path.is_file() and cert_path.is_file():
        return key_path, cert_path
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with FileLock(str(folder / ".lock"), timeout=60):
            if not (key_path.is_file() and cert_path.is_file()):
                key_pem, chain_pem = make_local_pair()
                _write_private(key_path, key_pem, 0o600)
                _write_private(cert_path, chain_pem, 0o644)
    except OSError as e:
        raise UsageError(f"spo could not make its local signing certificate in {folder} ({e.strerror or e}).",
                         "Make XDG_CONFIG_HOME writable, or give your own with --sign-key and --sign-cert.") from None
    return key_path, cert_path


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write with the final mode from the first byte (never a moment world-readable), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def make_local_pair(now: datetime | None = None, days: int = LOCAL_DAYS) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM): an ES256 key and its end-entity certificate, issued by a local root
    made for it alone (its key is discarded here). The chain is the end-entity certificate then the
    root."""
    import getpass
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.now(timezone.utc)
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in a container
        who = socket.gethostname()

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, LOCAL_ORG)])

    def usage(ca: bool):
        return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    def build(subject, issuer, public_key, ca: bool):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
                .add_extension(usage(ca), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = name(f"spo-cli local root, {who}")
    root = build(root_name, root_name, root_key.public_key(), ca=True).sign(root_key, hashes.SHA256())
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (build(name(f"spo-cli, {who}"), root_name, key.public_key(), ca=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem, leaf.public_bytes(pem) + root.public_bytes(pem)


# ---------------------------------------------------------------------------------------------
# The signer


def _context():
    import c2pa

    return c2pa.Context(c2pa.Settings.from_dict(_SETTINGS))


class Signer:
    """Signs encoded image bytes with a C2PA manifest built from the image's sidecar.

    Holds the SDK's signer (which holds the key in native memory); the key's bytes are not kept
    here, and nothing here logs or returns them. One lock: the render loop's writer thread and a
    server's share one signer."""

    def __init__(self, key_pem: bytes, chain_pem: bytes, alg: str, leaf, *, local: bool):
        import c2pa

        self._sdk = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=alg.encode(), sign_cert=chain_pem,
                                                              private_key=key_pem, ta_url=None))
        self._context = _context()
        self._lock = threading.Lock()
        self.alg = alg
        self.local = local
        self.subject = leaf.subject.rfc4514_string()
        self.issuer = leaf.issuer.rfc4514_string()
        self.sha256 = fingerprint(leaf)

    def __repr__(self) -> str:  # never the key
        return f"Signer({self.subject!r}, {self.alg}, sha256={self.sha256[:16]}…)"

    def record(self) -> dict:
        """What the sidecar says about the signing: which certificate, never the key."""
        return {"manifest": "c2pa", "signer": self.subject, "issuer": self.issuer, "cert_sha256": self.sha256,
                "alg": self.alg, "local_certificate": self.local}

    def sign(self, data: bytes, fmt: str, meta: dict) -> bytes:
        """`data` (an encoded image) with a signed manifest embedded; `meta` is its final sidecar."""
        return self._checked(meta.get("file"), self._sign, data, fmt, meta)

    def sign_grid(self, data: bytes, name: str, grid: dict) -> bytes:
        """A comparison grid page (PNG) with a signed manifest: a composite of generated cells;
        `grid` is what the page embeds (its index file and cells), its hash the recipe."""
        manifest = {
            "claim_generator_info": [_agent()],
            "title": name,
            "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": COMPOSITE, "softwareAgent": _agent()}]}},
                {"label": RECIPE_LABEL, "data": {"generator": "spo-cli", "version": __version__,
                                                 "grid_sha256": recipe_hash(grid),
                                                 "recipe_hash_of": "the page's spo-cli-grid JSON (sorted keys, "
                                                 "no whitespace, UTF-8)"}}],
        }
        return self._checked(name, self._sign_manifest, data, "png", manifest, None)

    @staticmethod
    def _checked(name: str | None, fn, *args) -> bytes:
        import c2pa

        try:
            return fn(*args)
        except (c2pa.C2paError, OSError) as e:
            raise OutputError(f"{name or 'The image'} could not be signed with C2PA ({_first_line(e)}); it was not "
                              "written.") from None

    def _sign(self, data: bytes, fmt: str, meta: dict) -> bytes:
        manifest, parent = build_manifest(meta)
        return self._sign_manifest(data, fmt, manifest, parent)

    def _sign_manifest(self, data: bytes, fmt: str, manifest: dict, parent) -> bytes:
        import c2pa

        out = io.BytesIO()
        with self._lock:
            builder = c2pa.Builder(manifest, self._context)
            if parent is not None:
                parent_bytes, kind, ingredient = parent
                builder.add_ingredient(ingredient, MIME[kind], io.BytesIO(parent_bytes))
            builder.sign(self._sdk, MIME[fmt], io.BytesIO(data), out)
        return out.getvalue()


def _agent() -> dict:
    return {"name": "spo-cli", "version": __version__}


def recipe_hash(meta: dict) -> str:
    """SHA-256 of the sidecar's canonical JSON: keys sorted, no spaces, UTF-8."""
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_manifest(meta: dict) -> tuple[dict, tuple[bytes, str, dict] | None]:
    """The manifest definition for an image's sidecar, and the parent to add as an ingredient
    (`_parent`'s) when the image was made from one that is still where it was."""
    agent = _agent()
    model = meta.get("model") or {}
    recipe = {
        "generator": "spo-cli",
        "version": __version__,
        "model": {k: model.get(k) for k in ("id", "revision", "commit", "file", "sha256") if model.get(k)},
        "recipe_sha256": recipe_hash(meta),
        "recipe_hash_of": "the sidecar JSON (sorted keys, no whitespace, UTF-8)",
    }
    if meta.get("spec_hash"):
        recipe["spec_hash"] = meta["spec_hash"]
    init = meta.get("init_image")
    parent = _parent(init) if isinstance(init, dict) else None
    if isinstance(init, dict):
        recipe["init_image_sha256"] = init.get("sha256")
    if parent is not None:
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}},
                   {"action": "c2pa.edited", "digitalSourceType": COMPOSITE, "softwareAgent": agent}]
    else:
        actions = [{"action": "c2pa.created", "digitalSourceType": COMPOSITE if init else TRAINED,
                    "softwareAgent": agent}]
    manifest = {
        "claim_generator_info": [agent],
        "title": meta.get("file") or "image",
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}},
                       {"label": RECIPE_LABEL, "data": recipe}],
    }
    return manifest, parent


def _parent(init: dict) -> tuple[bytes, str, dict] | None:
    """The parent image (its bytes, format, ingredient definition), only when it is the very file the
    image was made from (same SHA-256). Read once: what is hashed is what goes into the manifest."""
    try:
        path = Path(str(init.get("path")))
        if not path.is_file() or path.stat().st_size > PARENT_MAX_BYTES:
            return None
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    fmt = _kind(data[:12])
    if fmt is None or hashlib.sha256(data).hexdigest() != init.get("sha256"):
        return None
    return data, fmt, {"title": path.name, "relationship": "parentOf", "label": "parent"}


def _sniff(path: Path) -> str | None:
    """png, jpg or webp by the file's first bytes (a name can lie), else None."""
    try:
        with open(path, "rb") as f:
            return _kind(f.read(12))
    except OSError:
        return None


def _kind(head: bytes) -> str | None:
    """spo's format name (png, jpg, webp) of the image whose first bytes are `head`."""
    from spo_cli.outputs import reader

    kind = reader.sniff(head)
    return "jpg" if kind == "jpeg" else kind


def _tiny_png() -> bytes:
    """A 1x1 PNG made without PIL (the trial signing runs before any image library loads)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80")) + chunk(b"IEND", b""))


def signer_from_options(sign: bool, key: str | None, cert: str | None, *, now: datetime | None = None
                        ) -> Signer | None:
    """The Signer for --sign (None without it), every check done: files, key type, that the
    certificate is the key's and valid now, and a trial signing. Raises UsageError (exit 2)."""
    if not sign:
        given = [o for o, v in (("--sign-key", key), ("--sign-cert", cert)) if v]
        if given:
            raise UsageError(f"{' and '.join(given)} given without --sign.",
                             "Add --sign to sign the images (or leave them out).")
        return None
    _require()
    key = key or os.environ.get(KEY_ENV) or None
    cert = cert or os.environ.get(CERT_ENV) or None
    if bool(key) != bool(cert):
        given, missing = ("--sign-key", "--sign-cert") if key else ("--sign-cert", "--sign-key")
        raise UsageError(f"{given} (or {KEY_ENV if key else CERT_ENV}) is set without {missing}: signing needs both "
                         "a key and its certificate chain.",
                         f"Give {missing} too, or neither to sign with spo's local certificate.")
    local = key is None
    key_path, cert_path = local_credentials() if local else (Path(key).expanduser(), Path(cert).expanduser())
    key_opt, cert_opt = ("spo's local key", "spo's local certificate") if local else ("--sign-key", "--sign-cert")
    key_where, cert_where = f"{key_path} ({key_opt})", f"{cert_path} ({cert_opt})"
    now = now or datetime.now(timezone.utc)
    try:
        key_pem = _read_pem(key_path, "key", key_opt)
        chain_pem = _read_pem(cert_path, "certificate", cert_opt)
        chain = _load_chain(chain_pem, cert_where)
        alg = _check(_load_key(key_pem, key_where), chain, key_where, cert_where, now)
    except UsageError as e:
        if local:  # spo's own pair: say where it is and how to get a new one
            e.hint = f"spo's local certificate is in {local_dir()}; remove that folder and spo makes a new one."
        raise
    import c2pa
    from cryptography.hazmat.primitives.serialization import Encoding

    embedded = b"".join(c.public_bytes(Encoding.PEM) for c in _without_anchor(chain))
    try:
        signer = Signer(key_pem, embedded, alg, chain[0], local=local)
        signer._sign(_tiny_png(), "png", {"file": "trial.png"})
    except c2pa.C2paError as e:
        raise UsageError(f"The C2PA SDK refused to sign with the certificate {cert_where}: {_first_line(e)}.",
                         _CERT_HINT) from None
    return signer


# ---------------------------------------------------------------------------------------------
# Reading a manifest back (`spo inspect`)


def probe(path: Path) -> dict:
    """What a file's C2PA manifest says, for `spo inspect`: {"present": bool, ...}.

    With a manifest: `state` (trusted, valid, untrusted or invalid), `summary` (one sentence),
    `reasons` (the SDK's failure codes and explanations), `action`, `digital_source_type`,
    `signer`, `recipe` (spo's assertion), `recipe_matches` (whether the recorded recipe hash is the
    hash of the spo metadata found with the file; None when there is none) and `parents`.
    Never raises for a file's content: a hostile file is reported, not obeyed."""
    from spo_cli import extras

    path = Path(path)
    if extras.missing("c2pa"):
        return {"present": False, "checked": False, "summary": f"Not checked: C2PA needs c2pa-python. {pip_hint()}"}
    fmt = _sniff(path)
    if fmt is None:
        return {"present": False, "checked": False, "summary": "Not a PNG, JPEG or WebP file."}
    try:
        if path.stat().st_size > PROBE_MAX_BYTES:
            return {"present": False, "checked": False,
                    "summary": f"Not checked: over {PROBE_MAX_BYTES >> 20} MiB."}
        data = path.read_bytes()
    except OSError as e:
        return {"present": False, "checked": False, "summary": f"Cannot be read ({e.strerror or e})."}
    import c2pa

    try:
        reader = c2pa.Reader(MIME[fmt], io.BytesIO(data), context=_context())
        state = reader.get_validation_state()
        store = json.loads(reader.json())
    except c2pa.C2paError as e:
        if "ManifestNotFound" in type(e).__name__:
            return {"present": False, "checked": True, "summary": "No C2PA manifest."}
        # The SDK stopped before it found a manifest or while reading one: a damaged image, or a
        # damaged manifest store. Its JUMBF box ("jumb", labelled "c2pa") says which.
        if b"jumb" in data and b"c2pa" in data:
            return {"present": True, "checked": True, "state": "invalid", "reasons": [_first_line(e)],
                    "summary": f"The manifest does not validate: {_first_line(e)}."}
        return {"present": False, "checked": False,
                "summary": f"Could not be read as a {fmt.upper()} ({_first_line(e)})."}
    return _describe(store, state, path)


def _describe(store: dict, state: str | None, path: Path) -> dict:
    manifests = store.get("manifests") if isinstance(store, dict) else None
    active = manifests.get(store.get("active_manifest")) if isinstance(manifests, dict) else None
    if not isinstance(active, dict):
        return {"present": True, "checked": True, "state": "invalid", "reasons": ["no active manifest"],
                "summary": "A C2PA manifest store without an active manifest."}
    statuses = [s for s in store.get("validation_status") or [] if isinstance(s, dict)]
    codes = [str(s.get("code")) for s in statuses]
    failures = [f"{s.get('code')}: {s.get('explanation')}" for s in statuses if s.get("code") != UNTRUSTED]
    if state == "Trusted" and not failures:
        verdict, summary = "trusted", "The manifest is valid and its signer is on a trust list."
    elif state in ("Valid", "Trusted") and not failures:
        verdict, summary = ("untrusted", _signer_words(active.get("signature_info"))) if UNTRUSTED in codes else (
            "valid", "The manifest is valid.")
    else:
        verdict = "invalid"
        summary = "The manifest does not validate: " + "; ".join(failures or [f"state {state}"]) + "."
    actions = []
    recipe = None
    for a in active.get("assertions") or []:
        if not isinstance(a, dict):
            continue
        if str(a.get("label", "")).startswith("c2pa.actions"):
            actions += [x for x in (a.get("data") or {}).get("actions") or [] if isinstance(x, dict)]
        elif a.get("label") == RECIPE_LABEL:
            recipe = a.get("data")
    main = next((x for x in actions if x.get("digitalSourceType")), actions[0] if actions else {})
    sig = active.get("signature_info") or {}
    out = {
        "present": True, "checked": True, "state": verdict, "summary": summary, "reasons": failures,
        "action": main.get("action"), "digital_source_type": main.get("digitalSourceType"),
        "actions": [x.get("action") for x in actions],
        # c2pa-rs's signature_info "issuer" is the signing certificate's own organisation (its subject's
        # O), the claim's issuer in C2PA's sense, not the CA that issued the certificate.
        "signer": {"common_name": sig.get("common_name"), "organization": sig.get("issuer"), "alg": sig.get("alg")},
        "claim_generator": [g.get("name") for g in active.get("claim_generator_info") or [] if isinstance(g, dict)],
        "recipe": recipe,
        "recipe_matches": (matches := _recipe_matches(recipe, path)),
        "parents": [{"title": i.get("title"), "manifest": bool(i.get("active_manifest"))}
                    for i in active.get("ingredients") or []
                    if isinstance(i, dict) and i.get("relationship") == "parentOf"],
    }
    if matches is False:  # the recipe section shows that metadata: say here that the signature does not cover it
        out["summary"] += (" The spo-cli metadata found with the file is not the signed recipe (its hash differs): "
                           "it was changed after signing.")
    return out


def _signer_words(sig) -> str:
    """The summary for a valid manifest whose signer was not checked against a trust list: the
    signer as the certificate names it (hostile text: bounded here, made printable by inspect)."""
    sig = sig if isinstance(sig, dict) else {}
    name, org = (str(sig.get(k) or "")[:80] for k in ("common_name", "issuer"))  # issuer: the signer's O=
    if org == LOCAL_ORG:
        return LOCAL_WORDS
    signer = " ".join(filter(None, [f'"{name}"' if name else "an unnamed signer", f'of "{org}"' if org else ""]))
    return SIGNER_WORDS.format(signer=signer)


def _recipe_matches(recipe, path: Path) -> bool | None:
    """Whether the signed recipe hash is the hash of the spo metadata beside or inside the file."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("recipe_sha256"), str):
        return None
    from spo_cli.outputs import metadata

    try:
        meta, _ = metadata.load(path)
    except Exception:  # no spo metadata, or damaged: nothing to compare
        return None
    return None if meta is None else recipe_hash(meta) == recipe["recipe_sha256"]
