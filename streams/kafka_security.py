"""How the engine's Kafka clients connect: plaintext, TLS, SASL (PLAIN, SCRAM-SHA-256/512) or both.

One home for the contract. The worker (Faust and its own aiokafka clients), `explore replay`,
the novelty-table publisher and `explore infra check` all build their clients from one
`KafkaSecurity`, made from the engine's settings (`EngineConfig.kafka_security()`), so a secured
cluster is configured once, in the environment or the config file, for every command.

kafka-python and aiokafka take the same keyword names (`security_protocol`, `ssl_context`,
`sasl_mechanism`, `sasl_plain_username`, `sasl_plain_password`; SCRAM reuses the "plain" pair),
and Faust wants them as `broker_credentials`; `client_kwargs` and `faust_settings` give each its
spelling of the same thing. Errors at the first contact are translated by `explain_kafka_error`
into what to set, because the clients' own errors ("NoBrokersAvailable") do not say that the
broker wanted TLS or a password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """A Kafka client's security settings; the password never appears in its repr."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_cafile: str = ""  # PEM CA bundle that signed the brokers' certificates; empty: the system's
    ssl_certfile: str = ""  # PEM client certificate, for brokers that ask for one (mutual TLS)
    ssl_keyfile: str = ""  # its private key (empty: in the certificate file)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Kafka security protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"Kafka SASL mechanism must be one of {', '.join(MECHANISMS)}, "
                             f"got {self.sasl_mechanism!r}")
        if self.uses_sasl and not (self.username and self.password):
            raise ValueError(f"Kafka security protocol {self.protocol} needs a SASL username and password")
        if not self.uses_ssl and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"TLS files are set but the Kafka security protocol is {self.protocol}: "
                             "use SSL or SASL_SSL, or leave the files empty")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("a TLS client key needs its certificate (the certificate file setting)")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """What a log line or an error says about how the client connects (never the password)."""
        if self.uses_sasl:
            return f"{self.protocol}, {self.sasl_mechanism} as user {self.username!r}"
        return self.protocol

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context the clients share: server certificates verified against the CA file
        (or the system's), the hostname checked unless turned off, the client pair if given."""
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile or None)
        if not self.ssl_check_hostname:
            context.check_hostname = False
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's and aiokafka's clients (they share these names)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password)
        return kwargs

    def faust_settings(self) -> dict[str, Any]:
        """Faust app settings: `broker_credentials` as Faust's own credential classes, which it
        turns into the same aiokafka arguments for its consumer, producer and admin client."""
        import faust

        if self.uses_sasl:
            return {"broker_credentials": faust.SASLCredentials(username=self.username, password=self.password,
                                                                ssl_context=self.ssl_context(),
                                                                mechanism=self.sasl_mechanism)}
        if self.uses_ssl:
            return {"broker_credentials": faust.SSLCredentials(self.ssl_context())}
        return {}


PLAINTEXT = KafkaSecurity()


def explain_kafka_error(exc: BaseException, bootstrap: str, security: KafkaSecurity, cause: str = "") -> str:
    """A message that says what went wrong at the first contact with the broker and what to set.

    The clients report a TLS listener spoken to in plaintext as brokers that are not available,
    and a SASL listener without credentials the same way; the user needs to hear which setting
    is likely wrong, so each known failure is named with the settings that govern it.
    """
    name = type(exc).__name__
    text = str(exc) or name
    if cause:  # what the client logged before it gave up: the SASL or TLS failure itself
        text = f"{text} (last connection failure: {cause})"
    where = f"Kafka at {bootstrap} ({security.describe()})"
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        return (f"{where}: the broker's TLS certificate was not accepted: {text}. Set kafka_ssl_cafile "
                "(KAFKA_SSL_CAFILE) to the CA that signed it, or check the host name it was issued for")
    if "SaslAuthentication" in text or "Authentication" in name:
        return (f"{where}: the broker refused the credentials: {text}. Check kafka_sasl_username, "
                "kafka_sasl_password and kafka_sasl_mechanism (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, "
                "KAFKA_SASL_MECHANISM)")
    if "Authorization" in name:
        return f"{where}: not allowed: {text}. The broker's ACLs must grant this user the operation"
    if security.protocol == "PLAINTEXT":
        hint = ("if the listener expects TLS or SASL, set kafka_security_protocol (KAFKA_SECURITY_PROTOCOL) "
                "and the credentials")
    else:
        hint = f"check that the listener at that address speaks {security.protocol}"
    return f"{where}: no usable connection: {text}; {hint}"
