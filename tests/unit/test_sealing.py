"""Sealing sensitive fields (payportal.persistence.sealing) without a database: the key
encryption keys' setting, sealing and opening, what a flipped byte or a moved ciphertext
does, blind indexes and the console's search words."""

from __future__ import annotations

import base64
import os
from types import SimpleNamespace

import pytest

from payportal.persistence.sealing import (
    ACTIVE,
    INDEX,
    PURPOSES,
    RETIRED,
    Keyring,
    SealedFieldError,
    SealingError,
    key_version_of,
    new_data_key_row,
    new_kek,
    parse_keks,
    query_terms,
    read_keks,
    search_terms,
)


def _keyring(keks: dict[int, bytes] | None = None) -> tuple[Keyring, list[SimpleNamespace]]:
    keks = keks or parse_keks(new_kek())
    keyring = Keyring(keks)
    rows = [SimpleNamespace(**r) for r in keyring.missing_rows()]
    keyring.absorb(rows)
    return keyring, rows


def test_a_sealed_value_opens_to_what_was_sealed_and_holds_nothing_in_clear() -> None:
    keyring, _ = _keyring()
    for plain in ("ada@example.com", "tok_4242", "Ädä Lövelace ✓", ""):
        sealed = keyring.seal("contact", "payers.email", plain)
        assert sealed.startswith("pp1.contact.1.")
        assert plain == "" or plain not in sealed
        assert keyring.open_text("payers.email", sealed) == plain
    # Fresh nonce each time: equal values do not look equal at rest.
    assert keyring.seal("token", "t.c", "same") != keyring.seal("token", "t.c", "same")
    assert key_version_of(keyring.seal("token", "t.c", "x")) == ("token", 1)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1, -16])  # nonce, body, tag
def test_a_flipped_byte_is_an_error_naming_the_column_never_garbage(position: int) -> None:
    keyring, _ = _keyring()
    sealed = keyring.seal("token", "payment_methods.token", "tok_chargeable")
    header, body = sealed[:14], sealed[14:]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[position] ^= 0x01
    flipped = header + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(SealedFieldError) as raised:
        keyring.open("payment_methods.token", flipped)
    message = str(raised.value.at_row("pm_1"))
    assert message.startswith("payment_methods.token of row pm_1: ")
    assert "tok_chargeable" not in message


def test_a_ciphertext_moved_to_another_column_or_truncated_does_not_open() -> None:
    keyring, _ = _keyring()
    sealed = keyring.seal("contact", "account_profiles.name", "Ada")
    with pytest.raises(SealedFieldError, match=r"account_profiles\.email"):
        keyring.open("account_profiles.email", sealed)
    for broken in (sealed[:-4], sealed[:20], "plain@example.com", "pp1.contact.9." + sealed[14:]):
        with pytest.raises(SealedFieldError):
            keyring.open("account_profiles.name", broken)


def test_data_keys_are_wrapped_and_open_only_with_their_key_encryption_key() -> None:
    keks = parse_keks(new_kek())
    keyring, rows = _keyring(keks)
    assert {r.purpose for r in rows} == {*PURPOSES, INDEX}
    assert all(r.state == ACTIVE and r.kek_version == 1 for r in rows)
    sealed = keyring.seal("message", "outbox.payload", b"\x00\x01 bytes")

    # Another process with the same KEK and the stored rows opens it.
    other = Keyring(keks)
    other.absorb(rows)
    assert other.open("outbox.payload", sealed) == b"\x00\x01 bytes"
    # A wrong KEK, or one the rows do not name, is a configuration error.
    with pytest.raises(SealingError, match="does not open with its key encryption key"):
        Keyring(parse_keks(new_kek())).absorb(rows)
    with pytest.raises(SealingError, match="which PAYPORTAL_DATA_KEYS does not hold"):
        Keyring({2: os.urandom(32)}).absorb(rows)


def test_a_retired_key_is_forgotten_and_says_so() -> None:
    keyring, rows = _keyring()
    sealed = keyring.seal("token", "payment_methods.token", "tok_old")
    newer = SimpleNamespace(**new_data_key_row(keyring.keks, "token", 2, ACTIVE))
    retired = [SimpleNamespace(**{**vars(r), "state": RETIRED, "wrapped": ""})
               if r.purpose == "token" else r for r in rows]  # fmt: skip
    keyring.absorb([*retired, newer])
    assert key_version_of(keyring.seal("token", "payment_methods.token", "x")) == ("token", 2)
    with pytest.raises(SealedFieldError, match=r"token key v1, retired"):
        keyring.open("payment_methods.token", sealed)


def test_the_setting_accepts_several_versions_or_a_file_and_never_echoes_a_key(
    tmp_path: pytest.TempPathFactory,
) -> None:
    one, two = os.urandom(32), os.urandom(32)
    raw = f"1:{base64.b64encode(one).decode()}, 2:{base64.urlsafe_b64encode(two).decode()}"
    assert parse_keks(raw) == {1: one, 2: two}
    path = tmp_path / "keys"  # type: ignore[operator]
    path.write_text(raw.replace(", ", "\n") + "\n")
    assert read_keks(f"file:{path}") == {1: one, 2: two}
    short = base64.b64encode(os.urandom(16)).decode()
    for bad, says in ((f"1:{short}", "not 32 bytes"), ("1:%%%%", "<version>:<base64"),
                      ("secret-looking-value", "<version>:<base64"), ("", "holds no key")):
        with pytest.raises(SealingError, match=says) as raised:
            parse_keks(bad)
        assert bad == "" or bad not in str(raised.value)
    with pytest.raises(SealingError, match="cannot read"):
        read_keks(f"file:{tmp_path}/missing")


def test_blind_indexes_are_keyed_stable_and_separate_per_field() -> None:
    keyring, rows = _keyring()
    again = Keyring(keyring.keks)
    again.absorb(rows)
    index = keyring.blind_index("payers.email", "ada@example.com")
    assert len(index) == 64
    assert "ada" not in index
    assert again.blind_index("payers.email", "ada@example.com") == index
    assert keyring.blind_index("account.term", "ada@example.com") != index
    other, _ = _keyring()  # another database: other index key
    assert other.blind_index("payers.email", "ada@example.com") != index


def test_search_words_of_a_name_and_address_and_of_a_query() -> None:
    terms = search_terms("Grace Hopper & Co.", "Grace.Hopper@Navy.example")
    assert {"grace", "hopper", "co", "navy", "example", "grace.hopper@navy.example"} <= terms
    assert query_terms("  GRACE  hopper ") == {"grace", "hopper"}
    assert query_terms("grace@") == {"grace"}
    assert query_terms("Grace.Hopper@navy.example") == {"grace.hopper@navy.example"}
    assert query_terms("%_") == set()
