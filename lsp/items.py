"""LSP shapes for one suggestion: a ghost-text inline item and a classic completion item."""

from __future__ import annotations

from lsprotocol import types

from localspec.lsp.text_edits import PositionEncoding, position_at, word_start

LABEL_CHARS = 60
SOURCE = "localspec"


def inline_items(
    text: str, offset: int, suggestion: str, encoding: PositionEncoding
) -> types.InlineCompletionList:
    cursor = position_at(text, offset, encoding)
    item = types.InlineCompletionItem(insert_text=suggestion, range=types.Range(start=cursor, end=cursor))
    return types.InlineCompletionList(items=[item])


def completion_items(
    text: str, offset: int, suggestion: str, encoding: PositionEncoding
) -> types.CompletionList:
    """One item holding the whole (possibly multi-line) suggestion.

    It replaces the identifier typed so far (the range starts at that word) so the editor's fuzzy
    filter, which compares the typed word against `filter_text`, keeps the item visible. `is_incomplete`
    makes the editor ask again as the user types; those requests are answered from the cache.
    """
    start = word_start(text, offset)
    typed = text[start:offset]
    new_text = typed + suggestion
    first_line, _, rest = new_text.partition("\n")
    label = first_line if len(first_line) <= LABEL_CHARS else first_line[: LABEL_CHARS - 1] + "…"
    if rest:
        label += " …"
    edit_range = types.Range(
        start=position_at(text, start, encoding), end=position_at(text, offset, encoding)
    )
    item = types.CompletionItem(
        label=label or "(whitespace)",
        label_details=types.CompletionItemLabelDetails(description=SOURCE),
        kind=types.CompletionItemKind.Snippet if rest else types.CompletionItemKind.Text,
        detail=f"{SOURCE} suggestion ({new_text.count(chr(10)) + 1} lines)"
        if rest
        else f"{SOURCE} suggestion",
        documentation=new_text,  # a plain string: every client supports it
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=edit_range, new_text=new_text),
        filter_text=new_text,
        sort_text="0",
        preselect=True,
    )
    return types.CompletionList(is_incomplete=True, items=[item])
