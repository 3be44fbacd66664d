"""Certificates made by the tests, and the users and ACLs of the secured Apache Kafka they run on.

`make_tls_files` writes a throwaway CA and a server certificate for 127.0.0.1/localhost (PEM, what
Kafka's PEM keystore and Triton's --grpc-server-cert read); `grant` writes ACLs as the admin.
Nothing here is a fake: the broker is Apache Kafka with a SASL_SSL listener and its
StandardAuthorizer, the certificates are real X.509 ones checked by real TLS handshakes.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from streams.kafka_security import KafkaSecurity


@dataclass(frozen=True)
class TlsFiles:
    cafile: Path  # the CA's certificate: what clients trust
    certfile: Path  # the server's certificate (signed by the CA)
    keyfile: Path  # its private key, PKCS#8, unencrypted
    keystore: Path  # key + certificate + CA in one PEM file (Kafka's ssl.keystore.type=PEM)


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A CA and a server certificate for `hosts` (IP addresses and DNS names), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("explore test CA")).issuer_name(name("explore test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files = TlsFiles(directory / "ca.pem", directory / "server.crt", directory / "server.key",
                     directory / "keystore.pem")
    files.cafile.write_bytes(ca_cert.public_bytes(pem))
    files.certfile.write_bytes(cert.public_bytes(pem))
    files.keyfile.write_bytes(key_pem)
    files.keystore.write_bytes(key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    for path in (files.keyfile, files.keystore):
        path.chmod(0o600)
    return files


def grant(bootstrap: str, admin: KafkaSecurity, user: str, operations: list[tuple[str, str, str, str]],
          deny: bool = False) -> None:
    """ACLs for `user`, as the admin: (resource type, name, pattern type, operation) each, e.g.
    ("TOPIC", "abc-", "PREFIXED", "ALL") or ("GROUP", "abc-", "PREFIXED", "READ")."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    permission = ACLPermissionType.DENY if deny else ACLPermissionType.ALLOW
    acls = [ACL(f"User:{user}", "*", ACLOperation[op], permission,
                ResourcePattern(ResourceType[kind], resource, ACLResourcePatternType[pattern]))
            for kind, resource, pattern, op in operations]
    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="explore-test-acls", **admin.client_kwargs())
    try:
        result = client.create_acls(acls)
    finally:
        client.close()
    failed = result.get("failed") if isinstance(result, dict) else None
    assert not failed, f"creating ACLs failed: {failed}"


def revoke_denial(bootstrap: str, admin: KafkaSecurity, user: str, kind: str, resource: str, operation: str) -> None:
    """Delete the LITERAL DENY ACL that `grant(..., deny=True)` made for `user` on one resource."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    pattern = ResourcePatternFilter(ResourceType[kind], resource, ACLResourcePatternType.LITERAL)
    acl_filter = ACLFilter(f"User:{user}", "*", ACLOperation[operation], ACLPermissionType.DENY, pattern)
    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="explore-test-acls", **admin.client_kwargs())
    try:
        client.delete_acls([acl_filter])
    finally:
        client.close()
