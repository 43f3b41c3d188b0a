"""Removing secrets from text: :class:`Redactor`.

No secret reaches an error: every text taken from an answer (the error XML, ``x-oss-err``,
an HTML body, any header) goes through a :class:`Redactor` before a message is built from
it, so ``str(e)``, ``repr(e)``, ``e.message``, ``e.details`` and log lines never carry the
STS token, the access key secret or a request signature, even when a server or a proxy
echoes them. The client builds one per attempt (its credentials and signature) from the
one that knows every secret it has used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

__all__ = ["FRAGMENT", "REDACTED", "Redact", "Redactor"]

#: What cleans a text of secrets: a :class:`Redactor`, or any function like it.
Redact = Callable[[str], str]

REDACTED = "<redacted>"
#: A run of this many characters of a secret is redacted wherever it appears, so a server
#: that echoes a token cut short (or a message cut at its length limit) leaks no half of it.
FRAGMENT = 16
#: Secrets shorter than this are never looked for (they would match ordinary words).
_MIN_SECRET = 4
#: ``name=value`` / ``name: value`` pairs whose value is a credential, whatever its value:
#: signatures (``Signature=`` of V4 and of V1 presigned URLs, ``x-oss-signature``,
#: ``SignatureProvided``) and tokens (``security-token``, ``x-oss-security-token``).
_LABELLED = re.compile(
    r"(?i)\b((?:x-oss-)?signature(?:provided)?|(?:x-oss-)?security-?token|"
    r"access-?key-?secret|access_key_secret)(\s*[=:]\s*\"?)[^\s&,;\"'<>]+"
)
#: A V1 ``Authorization: OSS <id>:<signature>`` value.
_V1_AUTHORIZATION = re.compile(r"\bOSS ([\w.\-]+):(?!//)[A-Za-z0-9+/=]{8,}")


def _forms(secret: str) -> set[str]:
    """How ``secret`` may show up in text: as is, URL-encoded, JSON-escaped, or as the hex
    dump OSS puts in ``StringToSignBytes``."""
    raw = secret.encode("utf-8", "surrogatepass")
    return {
        secret,
        quote(secret, safe=""),
        quote(secret, safe="/"),
        quote_plus(secret),
        secret.replace("/", "\\/"),
        " ".join(f"{b:02x}" for b in raw),
        " ".join(f"{b:02X}" for b in raw),
        raw.hex(),
        raw.hex().upper(),
    }


class Redactor:
    """Removes secrets from text: ``redact(text) -> text`` with each replaced by ``<redacted>``.

    What goes: every secret (the access key secret, the STS token, a request's signature)
    in its usual encodings (:func:`_forms`), and any run of :data:`FRAGMENT` characters of
    one of them; every ``exact`` text (a request's whole ``Authorization`` value, whose
    other parts - algorithm, key id, scope - are no secret and must stay readable
    elsewhere); and the value of any labelled credential (``Signature=...``,
    ``x-oss-signature=...``, ``security-token=...``, ``OSS id:sig``), known or not.
    The lookup tables are built on first use (only error paths pay for them).
    """

    def __init__(self, secrets: Iterable[str | None] = (), *,
                 exact: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s and len(s) >= _MIN_SECRET)
        self._exact_only = tuple(s for s in exact if s and len(s) >= _MIN_SECRET)
        self._exact: list[str] | None = None
        self._grams: frozenset[str] = frozenset()

    def with_secrets(self, *more: str | None, exact: Iterable[str | None] = ()) -> Redactor:
        """A redactor for these secrets as well (e.g. one request's signature)."""
        return Redactor((*self._secrets, *more), exact=(*self._exact_only, *exact))

    def _build(self) -> list[str]:
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= _forms(secret)
        self._grams = frozenset(
            form[i : i + FRAGMENT]
            for form in forms
            for i in range(len(form) - FRAGMENT + 1)
        )
        self._exact = sorted(forms | set(self._exact_only), key=len, reverse=True)
        return self._exact

    def __call__(self, text: str) -> str:
        if not text:
            return text
        exact = self._exact if self._exact is not None else self._build()
        for form in exact:
            if form in text:
                text = text.replace(form, REDACTED)
        if self._grams and len(text) >= FRAGMENT:
            text = self._drop_fragments(text)
        text = _LABELLED.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _V1_AUTHORIZATION.sub(lambda m: f"OSS {m.group(1)}:{REDACTED}", text)

    def _drop_fragments(self, text: str) -> str:
        grams = self._grams
        spans: list[list[int]] = []
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in grams:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + FRAGMENT
                else:
                    spans.append([i, i + FRAGMENT])
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end in spans:
            out.append(text[last:start])
            out.append(REDACTED)
            last = end
        out.append(text[last:])
        return "".join(out)

