"""Native DICOM Model XML (PS3.19 Annex A.1) from DICOM JSON (PS3.18 F.2).

Converting from the JSON model keeps one source of truth: the archive precomputes JSON, and
XML is derived from it only when a client asks for ``application/dicom+xml``.
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _number_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def _add_person_name(parent: Any, index: int, value: Any) -> None:
    pn = etree.SubElement(parent, _q("PersonName"), number=str(index))
    groups = value if isinstance(value, dict) else {"Alphabetic": str(value)}
    for group in _PN_GROUPS:
        text = groups.get(group)
        if not text:
            continue
        el = etree.SubElement(pn, _q(group))
        for name, component in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
            if component:
                etree.SubElement(el, _q(name)).text = component


def _add_attributes(parent: Any, obj: dict[str, Any]) -> None:
    # PS3.19 A.1.1: attributes in ascending tag order.
    for tag in sorted(obj, key=lambda t: int(t, 16)):
        element = obj[tag]
        vr = element.get("vr", "UN")
        attrs = {"tag": tag.upper(), "vr": vr}
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attrs["keyword"] = keyword
        el = etree.SubElement(parent, _q("DicomAttribute"), attrs)
        if "BulkDataURI" in element:
            etree.SubElement(el, _q("BulkData"), uri=element["BulkDataURI"])
            continue
        if "InlineBinary" in element:
            etree.SubElement(el, _q("InlineBinary")).text = element["InlineBinary"]
            continue
        for i, value in enumerate(element.get("Value", ()), start=1):
            if vr == "SQ":
                item = etree.SubElement(el, _q("Item"), number=str(i))
                _add_attributes(item, value or {})
            elif vr == "PN":
                _add_person_name(el, i, value)
            else:
                v = etree.SubElement(el, _q("Value"), number=str(i))
                if value is not None:
                    v.text = _number_value(value) if isinstance(value, int | float) else value


def json_to_xml(obj: dict[str, Any]) -> bytes:
    """One DICOM JSON object → a NativeDicomModel document (UTF-8, with declaration)."""
    root = etree.Element(_q("NativeDicomModel"), nsmap={None: NAMESPACE})
    _add_attributes(root, obj)
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return result
