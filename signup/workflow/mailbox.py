"""Which mailbox an address reaches: the one form an address is stored and sent in, and the
key its mail budget and reminder chain count by, however the address was spelled.

Spellings that reach one mailbox are one for the budget: the case, an international domain
and its ASCII (punycode) form, a local part in quotes that change nothing ("victim"@ is
victim@), a sub-address (victim+anything@ is victim@, RFC 5233's convention, which most
providers follow) and, at Gmail, dots in the local part. People may still sign up with a
sub-address: the signup keeps and is sent to the address as they typed it.
"""

import re

import idna

# RFC 5322's atext: what a local part holds unquoted, between single dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"\A{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_ESCAPE = re.compile(r'(["\\])')

SUBADDRESS_SEPARATOR = "+"
# Domains whose mailboxes ignore dots in the local part, and the one each is counted as.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def ascii_domain(domain: str) -> str:
    """Return a domain lower-cased and in its ASCII form; raise idna.IDNAError if it is not a
    valid host name.

    IDNA 2008 with UTS 46 mapping, as browsers and registries use it: upper case and
    full-width letters map to their lower-case ASCII forms, and "straße.de" stays a domain of
    its own (the older IDNA 2003 codec in Python would turn it into "strasse.de").
    """
    return idna.encode(domain, uts46=True, transitional=False).decode("ascii")


def canonical_local_part(local: str) -> str:
    """Return a local part without its quotes where they change nothing ("a.b" is a.b), else
    quoted with only what must be escaped escaped ("a\\b" and "ab" are both ab)."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        content = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_ATOM.match(content):
            return content
        return '"' + _NEEDS_ESCAPE.sub(r"\\\1", content) + '"'
    return local


def canonical_email(address: str, *, strict: bool = False) -> str:
    """Return the one form in which an address is stored and sent to: the local part as typed
    but for quotes that change nothing, the domain lower-cased and in ASCII.

    Takes any string; a domain that is not a valid host name is only lower-cased, unless
    `strict`, which raises idna.IDNAError for it.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address
    try:
        domain = ascii_domain(domain)
    except idna.IDNAError:
        if strict:
            raise
        domain = domain.lower()
    return f"{canonical_local_part(local)}@{domain}"


def mailbox(address: str) -> str:
    """Return the mailbox an address reaches, as its budget counts it: the canonical address
    case-folded, without a sub-address, and at DOTLESS_DOMAINS without dots."""
    local, _at, domain = canonical_email(address).lower().rpartition("@")
    if local.startswith('"'):
        return f"{local}@{domain}"  # quoted for a reason: taken as it is
    base, separator, _tag = local.partition(SUBADDRESS_SEPARATOR)
    if separator and base:
        local = base
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"
