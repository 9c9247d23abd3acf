"""Go's own test vectors for `mime.ParseMediaType` and `mime/multipart`'s reader, run
against the proxy's port of them (proxy/multipart_form.py).

Provenance: the tables are Go's, from `src/mime/mediatype_test.go` (TestConsumeValue,
TestConsumeMediaParam, TestParseMediaType, TestParseMediaTypeBogus) and
`src/mime/multipart/multipart_test.go` (TestBoundaryLine, TestMultipart,
TestMultipartOnlyNewlines, TestVariousTextLineEndings, TestLineLimit,
TestMultipartTruncated, TestLineContinuation, TestQuotedPrintableEncoding, parseTests
with TestParse, TestNoBoundary), as in the newest copy of Go's tree at hand: the
repository Hao-yiwen/go (commits bf81491bddf4 and 87cf04acac1b, Go's tests with their
comments translated; its vectors include those of Go issues 46323, 48866 and 76236).
Go's backquoted strings are raw strings here. A vector whose type is "" is one
ParseMediaType refuses.
"""

from __future__ import annotations

import pytest

from proxy import multipart_form
from proxy.multipart_form import FormError, parse_media_type, read_form

# TestConsumeValue: (input, value, rest).
CONSUME_VALUE = [
    ("foo bar", "foo", " bar"),
    ("bar", "bar", ""),
    (" bar ", "", " bar "),
    ('"My value"end', "My value", "end"),
    ('"My value" end', "My value", " end"),
    (r'"\\" rest', "\\", " rest"),
    (r'"My \" value"end', 'My " value', "end"),
    (r'"\" rest', "", r'"\" rest'),
    (r'"C:\dev\go\robots.txt"', r"C:\dev\go\robots.txt", ""),
    (r'"C:\新建文件夹\中文第二次测试.mp4"', r"C:\新建文件夹\中文第二次测试.mp4", ""),
]

# TestConsumeMediaParam: (input, param, value, rest).
CONSUME_PARAM = [
    (" ; foo=bar", "foo", "bar", ""),
    ("; foo=bar", "foo", "bar", ""),
    (";foo=bar", "foo", "bar", ""),
    (";FOO=bar", "foo", "bar", ""),
    (';foo="bar"', "foo", "bar", ""),
    (';foo="bar"; ', "foo", "bar", "; "),
    (';foo="bar"; foo=baz', "foo", "bar", "; foo=baz"),
    (" ; boundary=----CUT;", "boundary", "----CUT", ";"),
    (' ; key=value;  blah="value";name="foo" ', "key", "value", ';  blah="value";name="foo" '),
    (';  blah="value";name="foo" ', "blah", "value", ';name="foo" '),
    (';name="foo" ', "name", "foo", " "),
]

NAME_FOO = {"name": "foo"}
A_UML = "foo-\u00e4.html"

# TestParseMediaType: (input, media type, params).
PARSE = [
    ('form-data; name="foo"', "form-data", NAME_FOO),
    (" form-data ; name=foo", "form-data", NAME_FOO),
    ('FORM-DATA;name="foo"', "form-data", NAME_FOO),
    (' FORM-DATA ; name="foo"', "form-data", NAME_FOO),
    (
        'form-data; key=value;  blah="value";name="foo" ',
        "form-data",
        {"key": "value", "blah": "value", "name": "foo"},
    ),
    ("foo; key=val1; key=the-key-appears-again-which-is-bogus", "", {}),
    # From RFC 2231:
    (
        "application/x-stuff; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
        "application/x-stuff",
        {"title": "This is ***fun***"},
    ),
    (
        'message/external-body; access-type=URL; URL*0="ftp://";'
        'URL*1="cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"',
        "message/external-body",
        {"access-type": "URL", "url": "ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"},
    ),
    (
        "application/x-stuff; title*0*=us-ascii'en'This%20is%20even%20more%20; "
        "title*1*=%2A%2A%2Afun%2A%2A%2A%20; "
        'title*2="isn\'t it!"',
        "application/x-stuff",
        {"title": "This is even more ***fun*** isn't it!"},
    ),
    # Tests from http://greenbytes.de/tech/tc2231/ (#name as Go's comments give it).
    ("attachment", "attachment", {}),  # attonly
    ("ATTACHMENT", "attachment", {}),  # attonlyucase
    ('attachment; filename="foo.html"', "attachment", {"filename": "foo.html"}),
    (
        'attachment; filename="0000000000111111111122222"',
        "attachment",
        {"filename": "0000000000111111111122222"},
    ),
    (
        'attachment; filename="00000000001111111111222222222233333"',
        "attachment",
        {"filename": "00000000001111111111222222222233333"},
    ),
    (r'attachment; filename="f\oo.html"', "attachment", {"filename": r"f\oo.html"}),
    (
        r'attachment; filename="\"quoting\" tested.html"',
        "attachment",
        {"filename": '"quoting" tested.html'},
    ),
    (
        'attachment; filename="Here\'s a semicolon;.html"',
        "attachment",
        {"filename": "Here's a semicolon;.html"},
    ),
    (
        'attachment; foo="bar"; filename="foo.html"',
        "attachment",
        {"foo": "bar", "filename": "foo.html"},
    ),
    (
        r'attachment; foo="\"\\";filename="foo.html"',
        "attachment",
        {"foo": '"\\', "filename": "foo.html"},
    ),
    ('attachment; FILENAME="foo.html"', "attachment", {"filename": "foo.html"}),
    ("attachment; filename=foo.html", "attachment", {"filename": "foo.html"}),
    ("attachment; filename=foo.html ;", "attachment", {"filename": "foo.html"}),
    ("attachment; filename='foo.html'", "attachment", {"filename": "'foo.html'"}),
    ('attachment; filename="foo-\u00e4.html"', "attachment", {"filename": A_UML}),
    (
        'attachment; filename="foo-\u00c3\u00a4.html"',
        "attachment",
        {"filename": "foo-\u00c3\u00a4.html"},
    ),
    ('attachment; filename="foo-%41.html"', "attachment", {"filename": "foo-%41.html"}),
    ('attachment; filename="50%.html"', "attachment", {"filename": "50%.html"}),
    (r'attachment; filename="foo-%\41.html"', "attachment", {"filename": r"foo-%\41.html"}),
    ('attachment; name="foo-%41.html"', "attachment", {"name": "foo-%41.html"}),
    ('attachment; name="\u00e4-%41.html"', "attachment", {"name": "\u00e4-%41.html"}),
    (
        'attachment; filename="foo-%c3%a4-%e2%82%ac.html"',
        "attachment",
        {"filename": "foo-%c3%a4-%e2%82%ac.html"},
    ),
    ('attachment; filename ="foo.html"', "attachment", {"filename": "foo.html"}),
    ("filename=foo.html", "", {}),
    ("x=y; filename=foo.html", "", {}),
    ('"foo; filename=bar;baz"; filename=qux', "", {}),
    ("filename=foo.html, filename=bar.html", "", {}),
    ("; filename=foo.html", "", {}),
    (": inline; attachment; filename=foo.html", "", {}),
    ("inline; attachment; filename=foo.html", "", {}),
    ("attachment; inline; filename=foo.html", "", {}),
    ('attachment; filename="foo.html".txt', "", {}),
    ('attachment; filename="bar', "", {}),
    ('attachment; filename=foo"bar;baz"qux', "", {}),
    ("attachment; filename=foo.html, attachment; filename=bar.html", "", {}),
    ("attachment; foo=foo filename=bar", "", {}),
    ("attachment; filename=bar foo=foo", "", {}),
    ("attachment filename=bar", "", {}),
    ("filename=foo.html; attachment", "", {}),
    ("attachment; xfilename=foo.html", "attachment", {"xfilename": "foo.html"}),
    (
        'attachment; creation-date="Wed, 12 Feb 1997 16:29:51 -0500"',
        "attachment",
        {"creation-date": "Wed, 12 Feb 1997 16:29:51 -0500"},
    ),
    (
        'attachment; modification-date="Wed, 12 Feb 1997 16:29:51 -0500"',
        "attachment",
        {"modification-date": "Wed, 12 Feb 1997 16:29:51 -0500"},
    ),
    ("foobar", "foobar", {}),
    (
        'attachment; example="filename=example.txt"',
        "attachment",
        {"example": "filename=example.txt"},
    ),
    (
        "attachment; filename*=UTF-8''foo-%c3%a4-%e2%82%ac.html",
        "attachment",
        {"filename": "foo-\u00e4-\u20ac.html"},
    ),
    ("attachment; filename*=''foo-%c3%a4-%e2%82%ac.html", "attachment", {}),
    (
        "attachment; filename*=UTF-8''foo-a%cc%88.html",
        "attachment",
        {"filename": "foo-a\u0308.html"},
    ),
    ("attachment; filename*= UTF-8''foo-%c3%a4.html", "attachment", {"filename": A_UML}),
    ("attachment; filename* =UTF-8''foo-%c3%a4.html", "attachment", {"filename": A_UML}),
    ("attachment; filename*=\"UTF-8''foo-%c3%a4.html\"", "attachment", {"filename": A_UML}),
    ('attachment; filename*="foo%20bar.html"', "attachment", {}),
    ("attachment; filename*=UTF-8'foo-%c3%a4.html", "attachment", {}),
    ("attachment; filename*=UTF-8''foo%", "attachment", {}),
    ("attachment; filename*=UTF-8''f%oo.html", "attachment", {}),
    ("attachment; filename*=UTF-8''A-%2541.html", "attachment", {"filename": "A-%41.html"}),
    ('attachment; filename*0="foo."; filename*1="html"', "attachment", {"filename": "foo.html"}),
    (
        "attachment; filename*0*=UTF-8''foo-%c3%a4; filename*1=\".html\"",
        "attachment",
        {"filename": A_UML},
    ),
    ('attachment; filename*0="foo"; filename*01="bar"', "attachment", {"filename": "foo"}),
    ('attachment; filename*0="foo"; filename*2="bar"', "attachment", {"filename": "foo"}),
    ('attachment; filename*1="foo."; filename*2="html"', "attachment", {}),
    ('attachment; filename*1="bar"; filename*0="foo"', "attachment", {"filename": "foobar"}),
    (
        "attachment; filename=\"foo-ae.html\"; filename*=UTF-8''foo-%c3%a4.html",
        "attachment",
        {"filename": A_UML},
    ),
    (
        "attachment; filename*=UTF-8''foo-%c3%a4.html; filename=\"foo-ae.html\"",
        "attachment",
        {"filename": A_UML},
    ),
    (
        "attachment; filename*0*=ISO-8859-15''euro-sign%3d%a4; "
        "filename*=ISO-8859-1''currency-sign%3d%a4",
        "attachment",
        {},
    ),
    (
        'attachment; foobar=x; filename="foo.html"',
        "attachment",
        {"foobar": "x", "filename": "foo.html"},
    ),
    # Browsers send UTF-8 directly, without RFC 2231.
    (
        'form-data; firstname="\u0411\u0440\u044d\u0434"; '
        'lastname="\u0424\u0438\u0446\u043f\u0430\u0442\u0440\u0438\u043a"',
        "form-data",
        {
            "firstname": "\u0411\u0440\u044d\u0434",
            "lastname": "\u0424\u0438\u0446\u043f\u0430\u0442\u0440\u0438\u043a",
        },
    ),
    ('foo; bar=""', "foo", {"bar": ""}),
    # MSIE's unescaped backslashes in a file name.
    (
        r'form-data; name="file"; filename="C:\dev\go\robots.txt"',
        "form-data",
        {"name": "file", "filename": r"C:\dev\go\robots.txt"},
    ),
    (
        r'form-data; name="file"; filename="C:\新建文件夹\中文第二次测试.mp4"',
        "form-data",
        {"name": "file", "filename": r"C:\新建文件夹\中文第二次测试.mp4"},
    ),
    # Go issue 46323: RFC 2231's example, with a trailing semicolon.
    (
        'message/external-body; access-type=URL;\n\t\tURL*0="ftp://";\n'
        '\t\tURL*1="cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar";',
        "message/external-body",
        {"access-type": "URL", "url": "ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"},
    ),
    # Go issue 48866: a parameter repeated with the same value.
    (
        "text; charset=utf-8; charset=utf-8; format=fixed",
        "text",
        {"charset": "utf-8", "format": "fixed"},
    ),
    (
        "text; charset=utf-8; format=flowed; charset=utf-8",
        "text",
        {"charset": "utf-8", "format": "flowed"},
    ),
    # Go issue 76236: '{' and '}' are token characters.
    ("attachment; filename={file}.png", "attachment", {"filename": "{file}.png"}),
]

# TestParseMediaTypeBogus: (input, error).
BOGUS = [
    ("bogus ;=========", "mime: invalid media parameter"),
    (
        'application/pdf; x-mac-type="3F3F3F3F"; x-mac-creator="3F3F3F3F" name="a.pdf";',
        "mime: invalid media parameter",
    ),
    ("bogus/<script>alert</script>", "mime: expected token after slash"),
    ("bogus/bogus<script>alert</script>", "mime: unexpected content after media subtype"),
    ('"attachment"', "mime: no media type"),
    ("attachment; filename=foo,bar.html", "mime: invalid media parameter"),
    ("attachment; ;filename=foo", "mime: invalid media parameter"),
    ("attachment; filename=foo bar.html", "mime: invalid media parameter"),
    ('attachment; filename="foo.html"; filename="bar.html"', "mime: duplicate parameter name"),
    ("attachment; filename=foo[1](2).html", "mime: invalid media parameter"),
    ("attachment; filename=foo-\u00e4.html", "mime: invalid media parameter"),
    ("attachment; filename=foo-\u00c3\u00a4.html", "mime: invalid media parameter"),
    ("attachment; filename *=UTF-8''foo-%c3%a4.html", "mime: invalid media parameter"),
]


@pytest.mark.parametrize(("given", "value", "rest"), CONSUME_VALUE)
def test_consume_value(given: str, value: str, rest: str) -> None:
    assert multipart_form._consume_value(given) == (value, rest)


@pytest.mark.parametrize(("given", "param", "value", "rest"), CONSUME_PARAM)
def test_consume_media_param(given: str, param: str, value: str, rest: str) -> None:
    assert multipart_form._consume_param(given) == (param, value, rest)


@pytest.mark.parametrize(("given", "media", "params"), PARSE)
def test_parse_media_type(given: str, media: str, params: dict[str, str]) -> None:
    if not media:
        with pytest.raises(ValueError):
            parse_media_type(given)
        return
    assert parse_media_type(given) == (media, params)


@pytest.mark.parametrize(("given", "error"), BOGUS)
def test_parse_media_type_bogus(given: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_media_type(given)
    assert str(caught.value) == error


# mime/multipart ---------------------------------------------------------------------

_PEEK = 4096  # multipart's peekBufferSize
# NextPart's limits on a part's header (maxMIMEHeaderSize, maxMIMEHeaders()).
_NEXT_PART_HEADER_SIZE = 10 << 20
_NEXT_PART_HEADERS = 10000
_CT = "text/plain; charset=ISO-8859-1"
Headers = dict[str, list[str]]


def _parts(sep: str, body: bytes) -> list[tuple[Headers, bytes]]:
    """NextPart and a read of each part, as Go's TestParse does, by the port's reader
    (`_Parts`, which ReadForm's port drives): each part's headers, lower-cased keys,
    and its content, decoded where it is sent quoted-printable as NextPart decodes it."""
    reader = multipart_form._Parts(sep.encode(), body)
    got: list[tuple[Headers, bytes]] = []
    while reader._next_part():
        headers: Headers = {}
        for key, value in reader._headers(_NEXT_PART_HEADER_SIZE, _NEXT_PART_HEADERS):
            headers.setdefault(key.decode(), []).append(value.decode())
        content = bytes(reader._content())
        if headers.get("content-transfer-encoding", [""])[0].lower() == "quoted-printable":
            content = multipart_form._quoted_printable(content)
        got.append((headers, content))
    return got


def _form_data(key: str, value: str) -> tuple[Headers, bytes]:
    """Go's formData: a part as App Engine's test body writes it."""
    return {"content-type": [_CT], "content-disposition": ["form-data; name=" + key]}, (
        value.encode()
    )


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


_APP_ENGINE_SEP = "00151757727e9583fd04bfbca4c6"
_BLOB_TYPE = (
    "message/external-body; charset=ISO-8859-1; blob-key=AHAZQqG84qllx7HUqO_oou5EvdYQNS3Mbbkb0"
    "RjjBoM_Kc1UqEN2ygDxWiyCPulIhpHRPx-VbpB6RX4MrsqhWAi_ZxJ48O9P2cTIACbvATHvg7IgbvZytyGMpL7xO1"
    "tlIvgwcM47JNfv_tGhy1XwyEUO8oldjPqg5Q"
)
_BLOB = (
    "Content-Type: image/png\r\nContent-Length: 232303\r\n"
    "X-AppEngine-Upload-Creation: 2012-05-10 23:14:02.715173\r\n"
    "Content-MD5: MzRjODU1ZDZhZGU1NmRlOWEwZmMwMDdlODBmZTA0NzA=\r\n"
    'Content-Disposition: form-data; name=file; filename="fall.png"\r\n\r\n'
)
_APP_ENGINE_FIELDS = [
    ("otherEmpty1", ""),
    ("otherFoo1", "foo"),
    ("otherFoo2", "foo"),
    ("otherEmpty2", ""),
    ("otherRepeatFoo", "foo"),
    ("otherRepeatFoo", "foo"),
    ("otherRepeatEmpty", ""),
    ("otherRepeatEmpty", ""),
    ("submit", "Submit"),
]


def _app_engine() -> str:
    parts = [
        f"--{_APP_ENGINE_SEP}\r\nContent-Type: {_CT}\r\n"
        f"Content-Disposition: form-data; name={key}\r\n\r\n" + (value + "\r\n" if value else "")
        for key, value in _APP_ENGINE_FIELDS
    ]
    blob = (
        f"--{_APP_ENGINE_SEP}\r\nContent-Type: {_BLOB_TYPE}\r\n"
        'Content-Disposition: form-data; name=file; filename="fall.png"\r\n\r\n'
        + _BLOB
        + f"\r\n--{_APP_ENGINE_SEP}--"
    )
    return "".join(parts) + blob


_NEXT_PART = "----=_NextPart_4c2fbafd7ec4c8bf08034fe724b608d9"
_NESTED = _crlf(
    f"""{_NEXT_PART}_alt
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit

This is a multi-part message in MIME format.

{_NEXT_PART}_alt
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: 8bit

html things
{_NEXT_PART}_alt--"""
)
_BLOCK_SEP = "00ffded004d4dd0fdf945fbdef9d9050cfd6a13a821846299b27fc71b9db"
_BLOCK_HEADERS = {
    "content-type": ["application/octet-stream"],
    "content-disposition": ['form-data; name="block"; filename="block"'],
}


def _block(sep: str, size: int, end: str) -> str:
    return _crlf(
        f'--{sep}\nContent-Disposition: form-data; name="block"; filename="block"\n'
        "Content-Type: application/octet-stream\n\n" + "A" * size + f"\n--{sep}--{end}"
    )


_SAFE_SEP = "08b84578eabc563dcba967a945cdf0d9f613864a8f4a716f0e81caa71a74"
_SAFE_SIZE = _PEEK - (len("\n--") + len(_SAFE_SEP) + len("\r") + 1)
_SAFE = (
    _crlf(
        f'--{_SAFE_SEP}\nContent-Disposition: form-data; name="myfile"; filename="my-file.txt"\n'
        "Content-Type: application/octet-stream\n\n"
    )
    + "A" * _SAFE_SIZE
    + _crlf(
        f'\n--{_SAFE_SEP}\nContent-Disposition: form-data; name="key"\n\nval\n--{_SAFE_SEP}--\n'
    )
)
# roundTripParseTest: Go's multipart.Writer's bytes for these parts (its fields sorted
# by name, CRLF line ends), with a boundary of its making.
_ROUND_SEP = "2a8ae6ad60fb2b8d6b2e8b0a2a2d8ef0e7d6b0bcd23f4a3b1c0e0d3e8c11"
_ROUND = [("empty", ""), ("lf", "\n"), ("cr", "\r"), ("crlf", "\r\n"), ("foo", "bar")]


def _round_trip() -> str:
    parts = [
        f"--{_ROUND_SEP}\r\nContent-Disposition: form-data; name={key}\r\n"
        f"Content-Type: {_CT}\r\n\r\n{value}\r\n"
        for key, value in _ROUND
    ]
    return "".join(parts).removesuffix("\r\n") + f"\r\n--{_ROUND_SEP}--\r\n"


FOO_BAR: Headers = {"foo": ["bar"]}

# parseTests: name -> (sep, input, [(headers, body)]).
PARSE_TESTS: dict[str, tuple[str, str, list[tuple[Headers, bytes]]]] = {
    "App Engine post": (
        _APP_ENGINE_SEP,
        _app_engine(),
        [
            *(_form_data(key, value) for key, value in _APP_ENGINE_FIELDS),
            (
                {
                    "content-type": [_BLOB_TYPE],
                    "content-disposition": ['form-data; name=file; filename="fall.png"'],
                },
                _BLOB.encode(),
            ),
        ],
    ),
    "single empty part, --boundary": ("abc", "--abc\r\nFoo: bar\r\n\r\n--abc--", [(FOO_BAR, b"")]),
    "single empty part, \\r\\n--boundary": (
        "abc",
        "--abc\r\nFoo: bar\r\n\r\n\r\n--abc--",
        [(FOO_BAR, b"")],
    ),
    "final part empty": (
        "abc",
        "--abc\r\nFoo: bar\r\n\r\n--abc\r\nFoo2: bar2\r\n\r\n--abc--",
        [(FOO_BAR, b""), ({"foo2": ["bar2"]}, b"")],
    ),
    "final part empty then crlf": ("abc", "--abc\r\nFoo: bar\r\n\r\n--abc--\r\n", [(FOO_BAR, b"")]),
    "final part empty then lwsp": ("abc", "--abc\r\nFoo: bar\r\n\r\n--abc-- \t", [(FOO_BAR, b"")]),
    "no parts": (
        "----WebKitFormBoundaryQfEAfzFOiSemeHfA",
        "------WebKitFormBoundaryQfEAfzFOiSemeHfA--\r\n",
        [],
    ),
    "fake separator as data": (
        "sep",
        "--sep\r\nFoo: bar\r\n\r\n--sepFAKE\r\n--sep--",
        [(FOO_BAR, b"--sepFAKE")],
    ),
    "boundary with whitespace": (
        "sep",
        "--sep \r\nFoo: bar\r\n\r\ntext\r\n--sep--",
        [(FOO_BAR, b"text")],
    ),
    "leading line": (
        "MyBoundary",
        _crlf(
            "This is a multi-part message.  This line is ignored.\n"
            "--MyBoundary\nfoo: bar\n\n\n--MyBoundary--"
        ),
        [(FOO_BAR, b"")],
    ),
    "issue 10616 minimal": (
        "sep",
        "--sep \r\nFoo: bar\r\n\r\na\r\n--sep_alt\r\nb\r\n\r\n--sep--",
        [(FOO_BAR, b"a\r\n--sep_alt\r\nb\r\n")],
    ),
    "nested separator prefix is outer separator": (
        _NEXT_PART[2:],
        _crlf(
            f"{_NEXT_PART}\nContent-Type: multipart/alternative; "
            f'boundary="{_NEXT_PART[2:]}_alt"\n\n'
        )
        + _NESTED
        + f"\r\n{_NEXT_PART}--",
        [
            (
                {"content-type": [f'multipart/alternative; boundary="{_NEXT_PART[2:]}_alt"']},
                _NESTED.encode(),
            )
        ],
    ),
    "peek buffer boundary condition": (
        _BLOCK_SEP,
        _block(_BLOCK_SEP, _PEEK - 65, ""),
        [(_BLOCK_HEADERS, b"A" * (_PEEK - 65))],
    ),
    "peek buffer boundary condition, CRLF at the end": (
        _BLOCK_SEP,
        _block(_BLOCK_SEP, _PEEK - 65, "\n"),
        [(_BLOCK_HEADERS, b"A" * (_PEEK - 65))],
    ),
    "peek buffer boundary condition, short buffer": (
        "aaaaaaaaaa" + _BLOCK_SEP,
        _block("aaaaaaaaaa" + _BLOCK_SEP, _PEEK, ""),
        [(_BLOCK_HEADERS, b"A" * _PEEK)],
    ),
    "safeCount off by one": (
        _SAFE_SEP,
        _SAFE,
        [
            (
                {
                    "content-type": ["application/octet-stream"],
                    "content-disposition": ['form-data; name="myfile"; filename="my-file.txt"'],
                },
                b"A" * _SAFE_SIZE,
            ),
            ({"content-disposition": ['form-data; name="key"']}, b"val"),
        ],
    ),
    "nested separator prefix is outer separator followed by a dash": (
        "foo",
        _crlf(
            '--foo\nContent-Type: multipart/alternative; boundary="foo-bar"\n\n'
            "--foo-bar\n\nBody\n--foo-bar\n\nBody2\n--foo-bar--\n--foo--"
        ),
        [
            (
                {"content-type": ['multipart/alternative; boundary="foo-bar"']},
                _crlf("--foo-bar\n\nBody\n--foo-bar\n\nBody2\n--foo-bar--").encode(),
            )
        ],
    ),
    "nested separator prefix is outer separator followed by double dash": (
        "foo",
        _crlf(
            '--foo\nContent-Type: multipart/alternative; boundary="foo--"\n\n'
            "--foo--\n\nBody\n\n--foo--"
        ),
        [({"content-type": ['multipart/alternative; boundary="foo--"']}, b"")],
    ),
    "round trip": (
        _ROUND_SEP,
        _round_trip(),
        [
            (
                {"content-disposition": [f"form-data; name={key}"], "content-type": [_CT]},
                value.encode(),
            )
            for key, value in _ROUND
        ],
    ),
}


@pytest.mark.parametrize("name", list(PARSE_TESTS))
def test_parse(name: str) -> None:
    sep, given, want = PARSE_TESTS[name]
    assert _parts(sep, given.encode()) == want


def test_boundary_line() -> None:
    reader = multipart_form._Parts(b"myBoundary", b"")
    assert reader._is_delimiter(b"--myBoundary\r\n")
    assert reader._is_delimiter(b"--myBoundary \r\n")
    assert reader._is_delimiter(b"--myBoundary \n")
    assert not reader._is_delimiter(b"--myBoundary bogus \n")
    assert not reader._is_delimiter(b"--myBoundary bogus--")


_LONG_LINE = b"\n\n\r\r\r\n\r\x00" * ((1 << 20) // 8)


@pytest.mark.parametrize("sep", ["\r\n", "\n"])
def test_multipart(sep: str) -> None:
    """TestMultipart and TestMultipartOnlyNewlines."""
    body = (
        "\nThis is a multi-part message.  This line is ignored.\n--MyBoundary\n"
        "Header1: value1\nHEADER2: value2\nfoo-bar: baz\n\nMy value\nThe end.\n"
        "--MyBoundary\nname: bigsection\n\n[longline]\n"
        "--MyBoundary\nHeader1: value1b\nHEADER2: value2b\nfoo-bar: bazb\n\n"
        "Line 1\nLine 2\nLine 3 ends in a newline, but just one.\n\n"
        "--MyBoundary\n\nnever read data\n--MyBoundary--\n\n\nuseless trailer\n"
    ).replace("\n", sep)
    start, _, end = body.encode().partition(b"[longline]")
    parts = _parts("MyBoundary", start + _LONG_LINE + end)
    assert len(parts) == 4
    (first, one), (second, two), (third, three), _ = parts
    assert (first["header1"], first["foo-bar"]) == (["value1"], ["baz"])
    assert one == f"My value{sep}The end.".encode()
    assert second["name"] == ["bigsection"] and two == _LONG_LINE
    assert third["foo-bar"] == ["bazb"]
    lines = ["Line 1", "Line 2", "Line 3 ends in a newline, but just one.", ""]
    assert three == sep.join(lines).encode()


@pytest.mark.parametrize(
    "text",
    [
        b"Foo\nBar",
        b"Foo\nBar\n",
        b"Foo\r\nBar",
        b"Foo\r\nBar\r\n",
        b"Foo\rBar",
        b"Foo\rBar\r",
        b"\x00\x01\x02\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10",
    ],
)
def test_various_text_line_endings(text: bytes) -> None:
    body = (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="value"\r\n\r\n'
        + text
        + b"\r\n--BOUNDARY--\r\n"
    )
    [(_, content)] = _parts("BOUNDARY", body)
    assert content == text


def test_line_limit() -> None:
    """A megabyte without a line end fails before a part (bufio's buffer is full)."""
    with pytest.raises(FormError):
        _parts("fooBoundary", b"\x00" * (1 << 20))


@pytest.mark.parametrize("end", ["", "--MyBoundary-"])
def test_multipart_truncated(end: str) -> None:
    body = _crlf(
        "\nThis is a multi-part message.  This line is ignored.\n--MyBoundary\n"
        "foo-bar: baz\n\nOh no, premature EOF!\n" + end
    )
    with pytest.raises(FormError) as caught:
        _parts("MyBoundary", body.encode())
    assert str(caught.value) == multipart_form.UNEXPECTED_EOF


def test_line_continuation() -> None:
    body = (
        "\n--Apple-Mail-2-292336769\nContent-Transfer-Encoding: 7bit\nContent-Type: text/plain;"
        "\n\tcharset=US-ASCII;\n\tdelsp=yes;\n\tformat=flowed\n\nI'm finding the same thing "
        "happening on my system (10.4.1).\n\n\n--Apple-Mail-2-292336769\n"
        "Content-Transfer-Encoding: quoted-printable\nContent-Type: text/html;\n"
        "\tcharset=ISO-8859-1\n\n<HTML><BODY>I'm finding the same thing =\nhappening on my "
        "system (10.4.1).=A0 But I built it with XCode =\n2.0.</BODY></=\nHTML>=\n\r\n"
        "--Apple-Mail-2-292336769--\n"
    )
    parts = _parts("Apple-Mail-2-292336769", body.encode())
    assert len(parts) == 2 and all(content for _, content in parts)


@pytest.mark.parametrize("cte", ["quoted-printable", "Quoted-PRINTABLE"])
def test_quoted_printable_encoding(cte: str) -> None:
    sep = "0016e68ee29c5d515f04cedf6733"
    # Soft line breaks within a word and after a space: the value is the lines joined.
    encoded = [
        "words " * 12 + "wor=",
        "ds " + "words " * 13 + "=",
        "words " * 12 + "wor=",
        "ds " + "words " * 13 + "=",
        "words " * 8 + "words",
    ]
    body = (
        f"--{sep}\r\nContent-Type: {_CT}\r\nContent-Disposition: form-data; name=text\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n" + "\r\n".join(encoded) + "\r\n"
        f"--{sep}\r\nContent-Type: {_CT}\r\nContent-Disposition: form-data; name=submit\r\n"
        f"\r\nSubmit\r\n--{sep}--"
    )
    form = read_form(f"multipart/form-data; boundary={sep}", "", body.encode())
    text = "".join(line.removesuffix("=") for line in encoded)
    assert text == " ".join(["words"] * 61)
    assert form.values == {"text": [text], "submit": ["Submit"]}


def test_no_boundary() -> None:
    with pytest.raises(FormError) as caught:
        _parts("", b"")
    assert str(caught.value) == "multipart: boundary is empty"


# TestNameAccessors: (Content-Disposition, FormName, FileName); ReadForm keeps a part
# with a FileName as a file, one with a FormName alone as a value, and skips the rest.
NAME_ACCESSORS = [
    ('form-data; name="foo"', "foo", ""),
    (" form-data ; name=foo", "foo", ""),
    ('FORM-DATA;name="foo"', "foo", ""),
    (' FORM-DATA ; name="foo"', "foo", ""),
    (" FORM-DATA ; name=foo", "foo", ""),
    (' FORM-DATA ; filename="foo.txt"; name=foo; baz=quux', "foo", "foo.txt"),
    (' not-form-data ; filename="bar.txt"; name=foo; baz=quux', "", "bar.txt"),
]


@pytest.mark.parametrize(("disposition", "name", "filename"), NAME_ACCESSORS)
def test_name_accessors(disposition: str, name: str, filename: str) -> None:
    body = f"--B\r\nContent-Disposition: {disposition}\r\n\r\nv\r\n--B--\r\n".encode()
    form = read_form("multipart/form-data; boundary=B", "", body)
    files = {key: [file.filename for file in kept] for key, kept in form.files.items()}
    if not name:
        assert (form.values, files) == ({}, {})
    elif filename:
        assert (form.values, files) == ({}, {name: [filename]})
    else:
        assert (form.values, files) == ({name: ["v"]}, {})


def _limits_form(values: int, files: int, extra_keys: int) -> bytes:
    """TestReadFormLimits's form, as Go's multipart.Writer writes it (a part's header
    fields sorted by name)."""
    parts = [
        f'--B\r\nContent-Disposition: form-data; name="field{i}"\r\n\r\nvalue {i}\r\n'
        for i in range(values)
    ]
    for i in range(files):
        fields = {
            "Content-Disposition": f'form-data; name="file{i}"; filename="file{i}"',
            "Content-Type": "application/octet-stream",
            **{f"K{j}": "v" for j in range(extra_keys)},
        }
        head = "".join(f"{key}: {fields[key]}\r\n" for key in sorted(fields))
        parts.append(f"--B\r\n{head}\r\nvalue {i}\r\n")
    return ("".join(parts) + "--B--\r\n").encode()


# TestReadFormLimits (formdata_test.go): (values, files, extra header keys per file,
# refused). Its GODEBUG rows (multipartmaxparts, multipartmaxheaders) are left out:
# Ollama runs with Go's defaults. Go reads these with ReadForm(1 << 10), Ollama with
# 25 << 20: the parts' and headers' counts decide them either way.
READ_FORM_LIMITS = [
    (1000, 0, 0, False),
    (1001, 0, 0, True),
    (500, 500, 0, False),
    (501, 500, 0, True),
    (0, 1000, 0, False),
    (0, 1001, 0, True),
    (0, 1, 9998, False),  # plus Content-Disposition and Content-Type
    (0, 1, 10000, True),
]


@pytest.mark.parametrize(("values", "files", "extra_keys", "refused"), READ_FORM_LIMITS)
def test_read_form_limits(values: int, files: int, extra_keys: int, refused: bool) -> None:
    body = _limits_form(values, files, extra_keys)
    if not refused:
        form = read_form("multipart/form-data; boundary=B", "", body)
        assert (len(form.values), len(form.files)) == (values, files)
        return
    with pytest.raises(FormError) as caught:
        read_form("multipart/form-data; boundary=B", "", body)
    assert str(caught.value) == multipart_form.TOO_LARGE


# TestReadFormEndlessHeaderLine: a header line (its name, its value, a continuation)
# longer than all ReadForm may hold is too large. Go's reader is endless; here the line
# is longer than Ollama's ParseMultipartForm(25 << 20) may hold, with its 10 MB more.
@pytest.mark.parametrize("prefix", [b"X-", b"X-Header: ", b"X-Header: foo\r\n  "])
def test_read_form_endless_header_line(prefix: bytes) -> None:
    body = (
        b'--boundary\r\nContent-Disposition: form-data; name="a"\r\n'
        b"Content-Type: text/plain\r\n" + prefix + b"X" * (36 << 20) + b"\r\n\r\nv\r\n--boundary--"
    )
    with pytest.raises(FormError) as caught:
        read_form("multipart/form-data; boundary=boundary", "", body)
    assert str(caught.value) == multipart_form.TOO_LARGE


def test_a_quoted_printable_files_header_counts_without_its_encoding() -> None:
    """NextPart drops Content-Transfer-Encoding from a quoted-printable part's header
    (multipart.go), so a file sent so counts one line less against the 10000 the files'
    headers share: the next part may have the line it leaves."""

    def file(i: int, extra: int, encoding: str = "") -> str:
        fields = [f'Content-Disposition: form-data; name="f{i}"; filename="f{i}"']
        fields += [f"K{j}: v" for j in range(extra)]
        if encoding:
            fields.append(f"Content-Transfer-Encoding: {encoding}")
        return "--B\r\n" + "".join(f + "\r\n" for f in fields) + "\r\nvalue\r\n"

    # 4999 lines kept of the first file's 5000: 5001 left for the second's.
    body = (file(0, 4998, "quoted-printable") + file(1, 5000) + "--B--\r\n").encode()
    form = read_form("multipart/form-data; boundary=B", "", body)
    assert sorted(form.files) == ["f0", "f1"]
    # Sent as it is, the first keeps all 5000: 5000 left, too few for 5001 lines.
    body = (file(0, 4998, "8bit") + file(1, 5000) + "--B--\r\n").encode()
    with pytest.raises(FormError) as caught:
        read_form("multipart/form-data; boundary=B", "", body)
    assert str(caught.value) == multipart_form.TOO_LARGE
