"""A tiny fake Avocado corpus (LDC2015T03 layout) and released-style LaMP_6 id files, for tests.

Layout as the official LaMP generator expects it: ``avocado-1.0.2/data/text/<custodian>.zip``, each
zip holding ``<custodian>/<custodian>-<n>-EM.txt`` email files (and attachment text files beside
them). The emails cover what an Avocado email can look like to a MIME parser: plain text, CRLF
line ends and a folded subject, RFC 2047 subjects, quoted-printable, base64, multipart/alternative,
an attachment, non-NFC text. ``EXPECTED`` (in the test) is worked out by hand from the rules.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

EMAILS: dict[str, bytes] = {
    # plain text, LF
    "001-000001-EM.txt": (
        b"From: Alice Avery <alice@avocado.example>\n"
        b"To: bob@avocado.example\n"
        b"Subject: Budget review\n"
        b"Date: Mon, 3 Apr 2000 10:00:00 +0000\n"
        b"\n"
        b"Hi Bob,\n\nplease review the budget.\n\n"
    ),
    # CRLF line ends, a folded subject with trailing blanks, a body with surrounding blank lines
    "001-000002-EM.txt": (
        b"From: Alice Avery <alice@avocado.example>\r\n"
        b"Subject:  Lunch on\r\n Friday  \r\n"
        b"\r\n"
        b"\r\n  Shall we meet at noon?\r\nA.\r\n\r\n"
    ),
    # RFC 2047 subject, quoted-printable UTF-8 body with a soft line break
    "001-000003-EM.txt": (
        b"From: alice@avocado.example\n"
        b"Subject: =?utf-8?q?Caf=C3=A9_plans?=\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"\n"
        b"The caf=C3=A9 opens at n=\noon.\n"
    ),
    # multipart/alternative: text/plain then text/html
    "002-000001-EM.txt": (
        b"From: Carol <carol@avocado.example>\n"
        b"Subject: Re: Release plan\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="XX"\n'
        b"\n"
        b"--XX\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"\n"
        b"Ship it on Monday.\n"
        b"--XX\n"
        b"Content-Type: text/html; charset=us-ascii\n"
        b"\n"
        b"<p>Ship it on Monday.</p>\n"
        b"--XX--\n"
    ),
    # multipart/mixed: a text part and a named attachment (left out of the body)
    "002-000002-EM.txt": (
        b"From: Carol <carol@avocado.example>\n"
        b"Subject: Slides\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="YY"\n'
        b"\n"
        b"--YY\n"
        b"Content-Type: text/plain\n"
        b"\n"
        b"Slides attached.\n"
        b"--YY\n"
        b'Content-Type: application/pdf; name="deck.pdf"\n'
        b'Content-Disposition: attachment; filename="deck.pdf"\n'
        b"Content-Transfer-Encoding: base64\n"
        b"\n"
        b"JVBERi0xLjQK\n"
        b"--YY--\n"
    ),
    # raw UTF-8 in the subject header, base64 UTF-8 body
    "002-000003-EM.txt": (
        "From: Dieter <dieter@avocado.example>\n"
        "Subject: Grüße\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "R3LDvMOfZSBhdXMgS8O2bG4h\n"
    ).encode("utf-8"),
    # decomposed (non-NFC) e + combining acute, in subject and in an 8-bit body; a stray invalid byte
    "003-000001-EM.txt": (
        "From: Eve <eve@avocado.example>\n"
        "Subject: Re\u0301sume\u0301\n"
        "\n"
        "My re\u0301sume\u0301 is attached.\n"
    ).encode("utf-8") + b"\xff\n",
    # which parts count as body: html listed first still comes after plain; rtf and a non-text part
    # with a Content-ID are attachments, a bare "attachment" disposition is not (mail-parser 3.15.0);
    # text/calendar comes last
    "003-000005-EM.txt": (
        b"Subject: Formats\n"
        b'Content-Type: multipart/mixed; boundary="QQ"\n'
        b"\n"
        b"--QQ\nContent-Type: text/html\n\n<b>Bold</b>\n"
        b"--QQ\nContent-Type: text/plain\n\nVisible text.\n"
        b"--QQ\nContent-Type: text/rtf\n\n{\\rtf1 hidden}\n"
        b"--QQ\nContent-Type: image/png\nContent-ID: <logo>\n\nPNGDATA\n"
        b"--QQ\nContent-Type: text/plain\nContent-Disposition: attachment\n\nhidden notes\n"
        b"--QQ\nContent-Type: text/calendar\n\nBEGIN:VCALENDAR\n"
        b"--QQ--\n"
    ),
    # referenced only by the error tests -----------------------------------------------------
    "003-000002-EM.txt": b"From: eve@avocado.example\nSubject: One\nSubject: Two\n\nbody\n",
    "003-000003-EM.txt": (
        b"From: eve@avocado.example\n"
        b"Subject: Only a file\n"
        b'Content-Type: multipart/mixed; boundary="ZZ"\n'
        b"\n"
        b"--ZZ\n"
        b'Content-Type: application/octet-stream; name="a.bin"\n'
        b"Content-Transfer-Encoding: base64\n"
        b"\n"
        b"AAEC\n"
        b"--ZZ--\n"
    ),
    "003-000004-EM.txt": (
        b"Subject: Broken\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nQUJD=RA\n"
    ),
    # an attachment's text: no headers at all
    "003-000001-AT-0001.txt": b"Quarterly numbers, plain text of an attachment.\n",
}

# released-style id records: ``input`` and profile ``text`` are message ids
IDS: dict[str, list[dict]] = {
    "train": [
        {"id": "600", "input": "001-000001-EM.txt", "user_id": "u1", "profile": [
            {"text": "001-000002-EM.txt", "id": "6000", "date": "2000-04-01"},
            {"text": "001-000003-EM.txt", "id": "6001", "date": "2000-04-02"},
        ]},
        {"id": "601", "input": "002-000001-EM.txt", "user_id": "u2", "profile": [
            {"text": "002-000002-EM.txt", "id": "6010", "date": "2000-05-01"},
            {"text": "002-000003-EM.txt", "id": "6011", "date": "2000-05-02"},
        ]},
    ],
    "dev": [
        {"id": "700", "input": "003-000001-EM.txt", "user_id": "u3", "profile": [
            {"text": "001-000001-EM.txt", "id": "7000", "date": "2000-06-01"},
        ]},
    ],
    "test": [
        {"id": "800", "input": "002-000002-EM.txt", "user_id": "u2", "profile": []},
    ],
}


def write_corpus(root: Path, emails: dict[str, bytes] = EMAILS) -> Path:
    """Write ``avocado-1.0.2/data/text/<custodian>.zip`` files under ``root``; return the text dir."""
    text = root / "avocado-1.0.2" / "data" / "text"
    text.mkdir(parents=True, exist_ok=True)
    by_custodian: dict[str, dict[str, bytes]] = {}
    for name, raw in emails.items():
        by_custodian.setdefault(name.split("-")[0], {})[name] = raw
    for custodian, files in sorted(by_custodian.items()):
        with zipfile.ZipFile(text / f"{custodian}.zip", "w") as z:
            for name, raw in files.items():
                z.writestr(f"{custodian}/{name}", raw)
    return text


def write_ids(ids_dir: Path, ids: dict[str, list[dict]] = IDS, time_split: bool = False,
              layout: str = "lamp-fid") -> Path:
    """Write released-style id files: ``[time/]LaMP_6/<split>/`` (lamp-fid) or flat ``<split>_...``."""
    for split, records in ids.items():
        if not time_split:
            records = [{k: v for k, v in r.items() if k != "user_id"} for r in records]
        folder = ids_dir
        if layout == "lamp-fid":
            folder = ids_dir / ("time/" if time_split else "") / "LaMP_6" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}_questions.json").write_text(json.dumps(records))
    return ids_dir
