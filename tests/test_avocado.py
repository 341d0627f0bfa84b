"""`lamp-fid avocado`: LaMP_6 files from a fake Avocado corpus, checked against hand-worked
expectations of the official generator's rules, and against the official generator's own email
parser, mail-parser 3.15.0, when that exact version is installed (the test extra pins it)."""

import importlib.metadata
import json
import re
import shutil
import zipfile

import pytest

from avocado_fake import EMAILS, IDS, write_corpus, write_ids
from lamp_fid.data.avocado import Email, avocado, parse_email
from lamp_fid.data.paths import split_paths
from lamp_fid.errors import LaMPDataError, LaMPError

GEN = "Generate a subject for the following email: "

# message id -> (subject, body), worked out by hand from mail-parser's rules
EXPECTED = {
    "001-000001-EM.txt": ("Budget review", "Hi Bob,\n\nplease review the budget."),
    # compat32 keeps the fold of a folded header; only the ends are stripped
    "001-000002-EM.txt": ("Lunch on\n Friday", "Shall we meet at noon?\nA."),
    "001-000003-EM.txt": ("Caf\u00e9 plans", "The caf\u00e9 opens at noon."),
    "002-000001-EM.txt": ("Re: Release plan",
                          "Ship it on Monday.\n--- mail_boundary ---\n<p>Ship it on Monday.</p>"),
    "002-000002-EM.txt": ("Slides", "Slides attached."),
    "002-000003-EM.txt": ("Gr\u00fc\u00dfe", "Gr\u00fc\u00dfe aus K\u00f6ln!"),
    # subjects are NFC-normalized, 8-bit bodies are not; the stray \xff byte is dropped
    "003-000001-EM.txt": ("R\u00e9sum\u00e9", "My re\u0301sume\u0301 is attached."),
    # plain parts first (a bare "attachment" disposition is body text in 3.15.0), then html, then others
    "003-000005-EM.txt": ("Formats", "Visible text.\n--- mail_boundary ---\nhidden notes"
                                     "\n--- mail_boundary ---\n<b>Bold</b>"
                                     "\n--- mail_boundary ---\nBEGIN:VCALENDAR"),
}

# The official generator's email parser. LaMP's own requirements pin mail_parser==3.15.0, the newest
# release when LaMP_6 was built (2023; mail-parser 4.0 came in October 2024). Later versions read emails
# differently: 4.x makes a bare "Content-Disposition: attachment" text part an attachment, and 4.8 keeps
# CRLF line ends and turns undecodable bytes into U+FFFD. So only this exact version is an oracle.
OFFICIAL_MAIL_PARSER = "3.15.0"

# emails parsed but not built into the fake corpus: (raw, subject, body) worked out by hand
MORE_EMAILS = {
    # 7bit/8bit bodies go through raw-unicode-escape: a literal \u0041 becomes "A" (as in 3.15.0)
    "escapes": (b"Subject: E\n\npath \\u0041 and \\u00e9 end\n", "E", "path A and \u00e9 end"),
    # the transfer encoding is compared unstripped: "7bit " is decoded as text of its charset
    "cte-space": (b"Subject: S\nContent-Transfer-Encoding: 7bit \n\nhello \\u0041\n", "S", "hello \\u0041"),
    # CRLF inside a multipart: universal newlines
    "crlf-multipart": (b"Subject: C\r\nContent-Type: multipart/alternative; boundary=\"B\"\r\n\r\n"
                       b"--B\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--B--\r\n",
                       "C", "line1\nline2"),
    # no start boundary: the whole payload is one part of subtype "mixed"
    "no-start-boundary": (b"Subject: NB\nContent-Type: multipart/mixed; boundary=\"B\"\n\nno boundary here\n",
                          "NB", "no boundary here"),
    # an attachment disposition with a parameter is body text too
    "disposition-param": (b"Subject: D\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
                          b"--B\nContent-Type: text/plain\n\nmain\n--B\nContent-Type: text/plain\n"
                          b"Content-Disposition: attachment; size=5\n\nnotes\n--B--\n",
                          "D", "main\n--- mail_boundary ---\nnotes"),
}
ALL_EMAILS = {**{n: (EMAILS[n], *EXPECTED[n]) for n in EXPECTED}, **MORE_EMAILS}


def expected_files(time_split=False):
    """The files the official generator's rules give for IDS, written out by hand."""
    def item(text_id, item_id, date):
        subject, body = EXPECTED[text_id]
        return {"text": body, "id": item_id, "date": date, "title": subject}

    def question(qid, input_id, profile, user_id):
        q = {"id": qid, "input": GEN + EXPECTED[input_id][1], "profile": profile}
        return {**q, "user_id": user_id} if time_split else q

    questions = {
        "train": [
            question("600", "001-000001-EM.txt", [item("001-000002-EM.txt", "6000", "2000-04-01"),
                                                  item("001-000003-EM.txt", "6001", "2000-04-02")], "u1"),
            question("601", "002-000001-EM.txt", [item("002-000002-EM.txt", "6010", "2000-05-01"),
                                                  item("002-000003-EM.txt", "6011", "2000-05-02")], "u2"),
        ],
        "dev": [question("700", "003-000001-EM.txt",
                         [item("001-000001-EM.txt", "7000", "2000-06-01")], "u3")],
        "test": [question("800", "002-000002-EM.txt", [], "u2")],
    }
    outputs = {
        "train": {"task": "LaMP_6", "golds": [{"id": "600", "output": "Budget review"},
                                              {"id": "601", "output": "Re: Release plan"}]},
        "dev": {"task": "LaMP_6", "golds": [{"id": "700", "output": "R\u00e9sum\u00e9"}]},
    }
    return questions, outputs


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "ldc")


@pytest.fixture
def ids(tmp_path):
    return write_ids(tmp_path / "ids")


@pytest.fixture(scope="module")
def official_mailparser():
    """mail-parser, if the installed version is the official generator's; else the test is skipped."""
    mailparser = pytest.importorskip("mailparser")
    version = importlib.metadata.version("mail-parser")
    if version != OFFICIAL_MAIL_PARSER:
        pytest.skip(f"mail-parser {version} is installed; the oracle is {OFFICIAL_MAIL_PARSER}, the "
                    "official generator's (pip install -e '.[test]')")
    return mailparser


@pytest.mark.parametrize("name", sorted(ALL_EMAILS))
def test_parse_email_by_hand(name):
    raw, subject, body = ALL_EMAILS[name]
    assert parse_email(raw) == Email(subject, body)


@pytest.mark.parametrize("name", sorted(ALL_EMAILS))
def test_parse_email_matches_mail_parser(tmp_path, official_mailparser, name):
    """The official generator calls mail-parser: subject = mail.subject, body = mail.body.strip()."""
    raw, subject, body = ALL_EMAILS[name]
    path = tmp_path / "email.txt"
    path.write_bytes(raw)
    mail = official_mailparser.parse_from_file(str(path))
    assert (mail.subject, mail.body.strip()) == (subject, body)  # the hand-worked oracle is the official one
    ours = parse_email(raw)
    assert (ours.subject, ours.body) == (mail.subject, mail.body.strip())


@pytest.mark.parametrize("time_split", [False, True])
def test_builds_official_files(tmp_path, corpus, time_split):
    ids_dir = write_ids(tmp_path / "ids", time_split=time_split)
    out = tmp_path / "data"
    written = avocado(corpus, ids_dir, out, time_split=time_split)
    questions, outputs = expected_files(time_split)
    for split in ("train", "dev", "test"):
        q_path, o_path = split_paths(out, "LaMP_6", split, time_split)
        assert q_path in written
        # same value and the same bytes as json.dump of the hand-worked structure (the official writer)
        assert json.loads(q_path.read_text()) == questions[split]
        assert q_path.read_text() == json.dumps(questions[split])
        if split == "test":
            assert o_path is None and not (q_path.parent / "test_outputs.json").exists()
        else:
            assert o_path.read_text() == json.dumps(outputs[split])
    assert len(written) == 5


def test_output_passes_lamp_fid_reader(tmp_path, corpus, ids):
    reader = pytest.importorskip("lamp_fid.data.reader")
    out = tmp_path / "data"
    avocado(corpus, ids, out)
    q, o = split_paths(out, "LaMP_6", "train")
    examples = list(reader.iter_examples("LaMP_6", q, o, check_dates=True))
    assert [e.id for e in examples] == ["600", "601"]
    assert examples[0].output == "Budget review"
    assert examples[0].profile[1]["title"] == "Caf\u00e9 plans"
    q, _ = split_paths(out, "LaMP_6", "test")
    assert [e.output for e in reader.iter_examples("LaMP_6", q)] == [None]


def test_extracted_corpus_flat_ids_and_ids_without_txt(tmp_path, corpus):
    """An extracted corpus and flat id files give the same files; ids may omit ``.txt``."""
    extracted = tmp_path / "extracted"
    for z in corpus.glob("*.zip"):
        zipfile.ZipFile(z).extractall(extracted)
    bare = {s: json.loads(json.dumps(r).replace("-EM.txt", "-EM")) for s, r in IDS.items()}
    ids_dir = write_ids(tmp_path / "flat", bare, layout="flat")
    out = tmp_path / "data"
    avocado(extracted, ids_dir, out, split="dev")
    q, o = split_paths(out, "LaMP_6", "dev")
    questions, outputs = expected_files()
    assert json.loads(q.read_text()) == questions["dev"]
    assert json.loads(o.read_text()) == outputs["dev"]
    assert not split_paths(out, "LaMP_6", "train")[0].exists()


def test_duplicate_message_keeps_the_first_copy(tmp_path, corpus, ids):
    """Sorted path order decides, so a rerun gives the same files."""
    for name, subject in (("000.zip", "First copy"), ("zzz.zip", "Last copy")):
        with zipfile.ZipFile(corpus / name, "w") as z:
            z.writestr("001/001-000001-EM.txt", f"Subject: {subject}\n\nbody\n")
    out = tmp_path / "data"
    avocado(corpus, ids, out, split="train")
    q, o = split_paths(out, "LaMP_6", "train")
    assert json.loads(o.read_text())["golds"][0] == {"id": "600", "output": "First copy"}


def test_refuses_to_overwrite(tmp_path, corpus, ids):
    out = tmp_path / "data"
    avocado(corpus, ids, out, split="test")
    q, _ = split_paths(out, "LaMP_6", "test")
    q.write_text("[]")
    with pytest.raises(LaMPError, match="exists.*--overwrite"):
        avocado(corpus, ids, out, split="test")
    assert q.read_text() == "[]"
    avocado(corpus, ids, out, split="test", overwrite=True)
    assert json.loads(q.read_text())[0]["id"] == "800"
    assert [p.name for p in q.parent.iterdir()] == ["test_questions.json"]  # no temp files left


def test_never_replaces_the_id_files(corpus, ids):
    with pytest.raises(LaMPError, match="replace the released id file"):
        avocado(corpus, ids, ids, split="dev", overwrite=True)


# --- errors -------------------------------------------------------------------------------------

def test_missing_corpus_dir(tmp_path, ids):
    with pytest.raises(LaMPError, match="no-such-dir: no such directory"):
        avocado(tmp_path / "no-such-dir", ids, tmp_path / "out")


def test_message_not_in_corpus(tmp_path, corpus):
    records = json.loads(json.dumps(IDS))
    records["dev"][0]["profile"].append({"text": "009-000009-EM.txt", "id": "7001"})
    ids_dir = write_ids(tmp_path / "ids", records)
    with pytest.raises(LaMPDataError) as err:
        avocado(corpus, ids_dir, tmp_path / "out", split="dev")
    msg = str(err.value)
    assert msg.startswith(str(ids_dir / "LaMP_6/dev/dev_questions.json"))
    assert "record id '700'" in msg and "field 'profile[1].text'" in msg and "'009-000009-EM.txt'" in msg
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("name, field, words", [
    ("003-000001-AT-0001.txt", "subject", "no Subject header"),
    ("003-000002-EM.txt", "subject", "2 Subject headers"),
    ("003-000003-EM.txt", "body", "no text part"),
    ("003-000004-EM.txt", "body", "invalid base64"),
])
def test_unparseable_email(tmp_path, corpus, name, field, words):
    ids_dir = write_ids(tmp_path / "ids", {"dev": [{"id": "900", "input": name, "profile": []}]})
    with pytest.raises(LaMPDataError) as err:
        avocado(corpus, ids_dir, tmp_path / "out", split="dev")
    msg = str(err.value)
    assert msg.startswith(str(corpus / "003.zip") + f"/003/{name}")
    assert f"record id {name!r}" in msg and f"field {field!r}" in msg and words in msg


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ('{"task": "LaMP_6", "golds": []}', "expected a JSON list"),
    ('[{"id": "1", "input": "001-000001-EM.txt"}]', "field 'profile'"),
    ('[{"id": "1", "input": "001-000001-EM.txt", "profile": [{"id": "2"}]}]', "field 'profile[0].text'"),
    ('[{"id": "1", "input": "Generate a subject for the following email: hi", "profile": []}]',
     "built LaMP_6 file"),
])
def test_unreadable_id_file(tmp_path, corpus, content, words):
    path = tmp_path / "ids" / "dev_questions.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(LaMPDataError, match=re.escape(words)) as err:
        avocado(corpus, tmp_path / "ids", tmp_path / "out", split="dev")
    assert str(err.value).startswith(str(path))


def test_missing_id_file_and_time_split_without_user_id(tmp_path, corpus, ids):
    shutil.rmtree(ids / "LaMP_6" / "test")
    with pytest.raises(LaMPError, match="no released LaMP_6 id file for split 'test'"):
        avocado(corpus, ids, tmp_path / "out")
    (ids / "time").mkdir()
    shutil.copytree(ids / "LaMP_6", ids / "time" / "LaMP_6")
    with pytest.raises(LaMPDataError, match="record id '700', field 'user_id'"):
        avocado(corpus, ids, tmp_path / "out", split="dev", time_split=True)


def test_cli(tmp_path, corpus, ids, capsys):
    from lamp_fid.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["avocado", "--help"])
    assert exit_.value.code == 0
    assert "--avocado_files_dir" in capsys.readouterr().out
    out = tmp_path / "data"
    assert main(["avocado", "--avocado_files_dir", str(corpus), "--ids_dir", str(ids),
                 "--output_dir", str(out), "--split", "dev"]) == 0
    assert split_paths(out, "LaMP_6", "dev")[1].exists()
    with pytest.raises(SystemExit) as exit_:
        main(["avocado", "--avocado_files_dir", str(tmp_path / "nope"), "--ids_dir", str(ids),
              "--output_dir", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamp-fid avocado: error: ") and "no such directory" in err and "\n" not in err
