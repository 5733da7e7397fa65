"""Names from users shown as text: escaping for Streamlit markdown and for plotly labels (pure, no streamlit).

Every name the app did not write itself (upload file names, workspace folders, model names, design values and
columns of models.csv, source files, paths, error messages that quote them) goes through one of these before it
reaches a markdown body, a widget label or a plotly figure. Places that show plain text (st.text, st.code,
dataframe cells, selectbox options) take the name as it is.
"""

from __future__ import annotations

import re

# ASCII punctuation that CommonMark, GFM or Streamlit's markdown give a meaning: emphasis (* _), links,
# images and footnotes ([ ]), code (`), HTML, autolinks and entities (< > &), math ($), strikethrough (~),
# tables (|), headings (#), lists and quotes (+ >), directives such as :blue[...] and :name (: { }).
# Backslash-escaping ASCII punctuation is valid CommonMark; ( ) ! ^ . , / - ' " ; ? = @ % stay as they are:
# without a live [ they mean nothing, or only at the start of a line (handled below), or in the text
# patterns broken below.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+|~$&:])")
_LINE_START = re.compile(r"^(\s*)(?:([-=])|(\d+)([.)]))")  # a list, setext line or thematic break at line start
# Streamlit turns some patterns into links or pictures after escapes are resolved (on the text itself), so an
# escape cannot stop them: URLs and e-mail addresses (GFM autolinks), :shortcode: emoji, :material/icon: and
# :streamlit:, and ->, <-, --, >=, <=, ~= between spaces (typographic arrows). A WORD JOINER (invisible, no
# width) inside each breaks the pattern while the name reads the same.
JOINER = "\u2060"
_TEXT_PATTERNS = (
    (re.compile(r"(?i)(https?:)(?=//)"), r"\1" + JOINER),
    (re.compile(r"(?i)(www)(?=\.)"), r"\1" + JOINER),
    (re.compile(r"([-.\w+])(?=@[-\w]+(?:\.[-\w]+)+)"), r"\1" + JOINER),
    (re.compile(r":(?=[\w+-]+:|material/)"), ":" + JOINER),
    (re.compile(r"(?<!\S)([<>~-])(?=(?:->|[->=])(?!\S))"), r"\1" + JOINER),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")  # newlines and the like: one line of text


def one_line(name: object) -> str:
    """A name as one line of text: control characters (newlines, tabs) become a space."""
    return _CONTROL.sub(" ", str(name))


def md(name: object) -> str:
    """Markdown that Streamlit shows as exactly the text of name: no link, image, emphasis, HTML, directive,
    icon, emoji, math or autolink, whatever the name holds."""
    s = one_line(name)
    for pattern, repl in _TEXT_PATTERNS:
        s = pattern.sub(repl, s)
    s = _MARKDOWN_SPECIAL.sub(r"\\\1", s)
    return _LINE_START.sub(_escape_line_start, s)


def _escape_line_start(m: re.Match) -> str:
    marker, digits, dot = m.group(2), m.group(3), m.group(4)
    return m.group(1) + (f"\\{marker}" if marker else f"{digits}\\{dot}")


def md_code(name: object) -> str:
    """An inline code span (markdown) that shows name verbatim in a monospace font, backticks in it included."""
    s = one_line(name).replace(":material/", ":" + JOINER + "material/")  # Streamlit rewrites this even in code
    if not s:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s[:1] in ("`", " ") or s[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


_PLOTLY_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "%": "&#37;", "$": "&#36;"}
_PLOTLY_PATTERN = re.compile("[&<>%$]")


def plotly_label(name: object) -> str:
    """Text for a plotly label (legend, title, tick, hover, template) that shows exactly name: its pseudo-HTML
    tags (<a href>, <b>, <br>...), entities, %{...} template fields and $...$ LaTeX are escaped."""
    return _PLOTLY_PATTERN.sub(lambda m: _PLOTLY_SPECIAL[m.group()], one_line(name))
