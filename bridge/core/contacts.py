"""How contact details are compared: phones as numbers, emails trimmed and case-folded.

A live chat hands back what a visitor or an agent typed (`+7 (999) 123-45-67`, `89991234567`,
` Dora@Example.com `); the messenger's profile has its own spelling. Both sides are reduced to
one key before they are stored or compared, and the originals are kept for display.
"""

from __future__ import annotations

# phonenumbers is imported where it is used: the settings import this module, and the
# delivery process, which never compares contacts, need not load it.


def phone_key(raw: str | None, region: str | None = None) -> str | None:
    """The number in E.164 (`+79991234567`), or None when `raw` is not a possible phone number.

    `region` (ISO 3166 alpha-2, e.g. "RU") reads numbers written without a `+` in that
    country's national format (`8 999 123-45-67`). A number without a `+` that is no possible
    number there, or with no region at all, is read as international (`79991234567`)."""
    import phonenumbers

    if not raw or not raw.strip():
        return None
    candidates = [(raw, region)]
    if not raw.lstrip().startswith("+"):
        candidates.append(("+" + raw.strip(), None))
    for text, where in candidates:
        try:
            number = phonenumbers.parse(text, where)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def email_key(raw: str | None) -> str | None:
    """The address trimmed and case-folded, or None when nothing is left."""
    if raw is None:
        return None
    key = raw.strip().casefold()
    return key or None


def known_region(value: str) -> bool:
    """Whether `phone_key` understands `value` as a default region."""
    import phonenumbers

    return value in phonenumbers.SUPPORTED_REGIONS
