// medmtl label review page: renders the embedded rows, keeps the reviewer's decisions (in
// localStorage when the browser allows it) and writes corrections.csv
// (stem,field,old,new,note; one row per accepted or edited suggestion) and, for the suggested
// clips of the first screen, trusted.csv (clip,view,reviewer,date,how; one decision per clip).
// No server, no network.
"use strict";

function csvField(value) {
  const s = value === null || value === undefined ? "" : String(value);
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

// items: the page's rows; decisions: {key: {state: "accept"|"reject"|"edit", value, note}}
function correctionsCsv(items, decisions) {
  const lines = ["stem,field,old,new,note"];
  for (const it of items) {
    const d = decisions[it.key];
    if (!d || (d.state !== "accept" && d.state !== "edit")) continue;
    const next = d.state === "accept" ? it.suggested : (d.value || "");
    if (next === it.given) continue;  // no change
    lines.push([it.stem, it.field, it.given, next, d.note || ""].map(csvField).join(","));
  }
  return lines.join("\n") + "\n";
}

function sortItems(items, how) {
  const out = items.slice();
  const by = {
    "score-desc": (a, b) => b.score - a.score || a.stem.localeCompare(b.stem),
    "score-asc": (a, b) => a.score - b.score || a.stem.localeCompare(b.stem),
    "clip": (a, b) => a.clip.localeCompare(b.clip) || b.score - a.score,
  }[how] || ((a, b) => b.score - a.score);
  out.sort(by);
  return out;
}

// clips: the suggested clips; clipDecisions: {key: view name | "unsure"}; one row per decided
// clip ("can't tell" is written as view "?": not a label, it keeps the clip out of later lists)
function trustedCsv(clips, clipDecisions, reviewer, date, how) {
  const lines = ["clip,view,reviewer,date,how"];
  for (const c of clips) {
    const v = clipDecisions[c.key];
    if (!v) continue;
    lines.push([c.clip, v === "unsure" ? "?" : v, reviewer, date, how].map(csvField).join(","));
  }
  return lines.join("\n") + "\n";
}

// a name split where it may wrap: after - _ . / (a <wbr> each), never inside a token such as
// "clip" (the CSS breaks a token only when it alone is wider than the card)
function breakPoints(text) {
  return String(text).split(/(?<=[-_./])/);
}

if (typeof module !== "undefined") module.exports = { breakPoints, csvField, correctionsCsv, sortItems, trustedCsv };

if (typeof document !== "undefined") {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const items = DATA.items;
  const storeKey = "medmtl-review:" + DATA.page_id;
  let decisions = {};
  try { decisions = JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (e) { decisions = {}; }
  const save = () => { try { localStorage.setItem(storeKey, JSON.stringify(decisions)); } catch (e) {} };
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v; else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v);
    }
    for (const k of kids) n.append(k);
    return n;
  };
  // text with a <wbr> at each of its breakPoints
  const wrap = (text) => el("span", {}, ...breakPoints(text).flatMap((p, i) => (i ? [el("wbr"), p] : [p])));

  const clipSel = $("clip");
  for (const c of [...new Set(items.map((i) => i.clip))].sort()) clipSel.append(el("option", { value: c }, c));

  function editor(it, d) {
    if (it.field === "view") {
      const s = el("select", { "aria-label": "corrected view", onchange: (e) => { d.value = e.target.value; d.state = "edit"; save(); render(); } });
      for (const v of [...DATA.cls_names, ""]) {
        const o = el("option", { value: v }, v === "" ? "(no view)" : v);
        if (v === (d.value ?? it.suggested)) o.selected = true;
        s.append(o);
      }
      return s;
    }
    const t = el("textarea", { rows: "3", "aria-label": "corrected boxes, one 'cls cx cy w h' per line" });
    t.value = (d.value ?? it.suggested).split(";").filter(Boolean).join("\n");
    t.addEventListener("change", (e) => {
      d.value = e.target.value.split(/\n+/).map((x) => x.trim()).filter(Boolean).join(";"); d.state = "edit"; save(); render();
    });
    return t;
  }

  function card(it) {
    const d = decisions[it.key] || (decisions[it.key] = { state: "", note: "" });
    const set = (state) => () => { d.state = d.state === state ? "" : state; if (state === "edit" && d.value === undefined) d.value = it.suggested; save(); render(); };
    const btn = (state, label) => el("button", { class: "btn " + state + (d.state === state ? " on" : ""), type: "button", onclick: set(state) }, label);
    const fmt = (s) => (it.field === "boxes" ? (s || "(none)").split(";").join("\n") : (s || "(no view)"));
    const sig = [it.model_issue ? "model" : "", it.clip_issue ? "clip" : ""].filter(Boolean).join(" + ") || "-";
    const info = el("div", { class: "info" },
      el("div", { class: "stem" }, `#${it.rank} `, wrap(it.stem)),
      el("div", {}, el("b", {}, "clip "), el("a", { href: "#", onclick: (e) => { e.preventDefault(); clipSel.value = it.clip; render(); } }, wrap(it.clip))),
      el("div", { class: "kv" }, el("span", {}, it.field === "view" ? "given view" : "given boxes"), el("pre", {}, fmt(it.given))),
      el("div", { class: "kv" }, el("span", {}, "suggested"), el("pre", { class: "sugg" }, fmt(it.suggested))),
      it.field === "view" ? el("div", { class: "kv" }, el("span", {}, "clip majority"), el("pre", {}, (it.clip_majority || "-") + (it.clip_votes ? "  (" + it.clip_votes + ")" : ""))) : "",
      it.probs ? el("div", { class: "kv" }, el("span", {}, "model"), el("pre", {}, DATA.cls_names.map((n, k) => n + " " + it.probs[k].toFixed(2)).join("  "))) : "",
      el("div", { class: "kv" }, el("span", {}, "score"), el("pre", {}, it.score.toFixed(3) + "  flagged by: " + sig + (it.model_quality === null ? "" : "  model quality " + it.model_quality.toFixed(3)))),
      el("div", { class: "actions" }, btn("accept", "Accept"), btn("reject", "Reject"), btn("edit", "Edit")),
      d.state === "edit" ? editor(it, d) : "",
      el("input", { type: "text", placeholder: "note", value: d.note || "", onchange: (e) => { d.note = e.target.value; save(); } }));
    return el("article", { class: "card " + (d.state || "open") }, el("img", { src: it.thumb, alt: it.stem, loading: "lazy" }), info);
  }

  function render() {
    const clip = clipSel.value, field = $("field").value, state = $("state").value;
    const shown = sortItems(items, $("sort").value).filter((it) =>
      (!clip || it.clip === clip) && (!field || it.field === field) &&
      (!state || (state === "open" ? !(decisions[it.key] || {}).state : (decisions[it.key] || {}).state === state)));
    $("rows").replaceChildren(...shown.map(card));
    const done = items.filter((it) => (decisions[it.key] || {}).state).length;
    $("count").textContent = `${shown.length} shown, ${done} of ${items.length} decided`;
  }

  const clips = DATA.clips || [];
  const clipKey = storeKey + ":clips";
  let clipDecisions = {};
  try { clipDecisions = JSON.parse(localStorage.getItem(clipKey) || "{}"); } catch (e) { clipDecisions = {}; }
  const saveClips = () => { try { localStorage.setItem(clipKey, JSON.stringify(clipDecisions)); } catch (e) {} };

  function clipCard(c) {
    const pick = (v) => () => { clipDecisions[c.key] = clipDecisions[c.key] === v ? undefined : v; saveClips(); renderClips(); };
    const chosen = clipDecisions[c.key];
    const btns = [...DATA.cls_names, "unsure"].map((v) => el("button", {
      class: "btn view" + (chosen === v ? " on" : ""), type: "button", onclick: pick(v) }, v === "unsure" ? "can't tell" : v));
    const post = DATA.cls_names.map((n, k) => n + " " + c.posterior[k].toFixed(2)).join("  ");
    return el("article", { class: "clipcard" + (chosen ? " decided" : "") },
      el("div", { class: "thumbs" }, ...c.thumbs.map((t) => el("img", { src: t, alt: c.clip, loading: "lazy" }))),
      el("div", { class: "stem" }, `${c.order}. `, wrap(c.clip)),
      el("div", { class: "kv" }, el("span", {}, "patient "), c.patient + ", " + c.frames + " frames"),
      el("div", { class: "kv" }, el("span", {}, "label says "), el("b", {}, c.given),
        el("span", {}, "  likely "), el("b", { class: "sugg" }, c.suggested),
        el("span", {}, "  P(label wrong) "), c.score.toFixed(2)),
      el("div", { class: "kv" }, el("span", {}, "posterior "), post),
      el("div", { class: "views" }, ...btns));
  }

  function renderClips() {
    $("clips").replaceChildren(...clips.map(clipCard));
    const done = clips.filter((c) => clipDecisions[c.key]).length;
    $("trusted-count").textContent = `${done} of ${clips.length} clips decided`;
  }

  $("download-trusted").addEventListener("click", () => {
    const date = new Date().toISOString().slice(0, 10);
    const reviewer = $("reviewer").value.trim() || "anonymous";
    const blob = new Blob([trustedCsv(clips, clipDecisions, reviewer, date, $("how").value.trim() || "by eye")], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "trusted.csv" });
    document.body.append(a); a.click(); a.remove();
  });
  renderClips();

  for (const id of ["clip", "field", "state", "sort"]) $(id).addEventListener("change", render);
  $("download").addEventListener("click", () => {
    const blob = new Blob([correctionsCsv(items, decisions)], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "corrections.csv" });
    document.body.append(a); a.click(); a.remove();
  });
  render();
}
