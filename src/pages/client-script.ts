/**
 * The pages' one script, after ansi_up's class (prepended by assets.ts). Live build pages only: it follows the
 * log over SSE from where the server-rendered log stopped, renders lines the way log-html.ts does (same
 * markup, `\r` collapse, `==>` sections), appends them once per animation frame, and updates the build's
 * state in place. Everything else works without it.
 */
export const CLIENT_SCRIPT = String.raw`
(function () {
  "use strict";
  var SGR = /\x1b\[[0-9;:]*m/g;
  var OWN = /(?<!\bafter)\s(\d+ ms|\d+(?:\.\d+)? s)$/;
  var AFTER = /\bafter (\d+ ms|\d+(?:\.\d+)? s)\b/;
  var PER_BLOCK = 500;
  var TERMINAL = { success: 1, failure: 1, cancelled: 1, error: 1 };

  function collapse(line) {
    var text = line.replace(/\r+$/, "");
    var cr = text.lastIndexOf("\r");
    if (cr < 0) return text;
    return (text.slice(0, cr).match(SGR) || []).join("") + text.slice(cr + 1);
  }
  function fmt(ms) {
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
  }
  function duration(b) {
    if (!b.startedAt) return "";
    var end = b.finishedAt ? Date.parse(b.finishedAt) : Date.now();
    var s = Math.max(0, Math.round((end - Date.parse(b.startedAt)) / 1000));
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  var log = document.getElementById("log");
  var end = document.getElementById("log-end");
  if (!log || !end) return;
  var ansi = new AnsiUp();
  ansi.use_classes = true;
  var line = Number(end.getAttribute("data-lines")) || 0;
  var offset = Number(end.getAttribute("data-offset")) || 0;
  var blocks = log.querySelectorAll(".blk");
  var block = blocks[blocks.length - 1];
  var blockLines = block ? block.childElementCount : 0;
  var sections = log.querySelectorAll("details");
  var section = sections[sections.length - 1] || null;
  var sectionStart = performance.now();
  var pending = "";
  var scheduled = false;
  var following = true;
  var follow = document.getElementById("follow");
  var stateEl = document.getElementById("b-state");

  function newBlock(parent, before) {
    block = document.createElement("div");
    block.className = "blk";
    parent.appendChild(block);
    blockLines = 0;
  }
  if (!block) newBlock(log, line);

  function setDuration(sec, text) {
    if (!sec || sec.querySelector("summary .dur")) return;
    var span = document.createElement("span");
    span.className = "dur";
    span.title = "step duration";
    span.textContent = text;
    sec.querySelector("summary").appendChild(span);
  }

  function render(text) {
    var parts = text.split("\n");
    var html = "";
    var flush = function () {
      if (html) block.insertAdjacentHTML("beforeend", html);
      html = "";
    };
    for (var i = 0; i < parts.length; i++) {
      var raw = collapse(parts[i]);
      var visible = raw.replace(SGR, "");
      line++;
      var id = "L" + line;
      if (visible.indexOf("==> ") === 0) {
        flush();
        var now = performance.now();
        var after = AFTER.exec(visible);
        setDuration(section, after ? after[1] : fmt(now - sectionStart));
        sectionStart = now;
        section = document.createElement("details");
        section.open = true;
        var own = OWN.exec(visible);
        section.innerHTML = '<summary id="' + id + '"><a href="#' + id + '">' + line + '</a><span class="step">' +
          ansi.ansi_to_html(raw) + "</span></summary>";
        if (own) setDuration(section, own[1]);
        log.appendChild(section);
        newBlock(section, line);
        continue;
      }
      if (blockLines === PER_BLOCK) {
        flush();
        newBlock(block.parentNode, line - 1);
      }
      var set = blockLines === 0 ? ' style="counter-set:ln ' + line + '"' : "";
      blockLines++;
      html += '<div id="' + id + '"' + set + ">" + ansi.ansi_to_html(raw) + "</div>";
    }
    flush();
  }

  function frame() {
    scheduled = false;
    var nl = pending.lastIndexOf("\n");
    if (nl < 0) return;
    var text = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    render(text);
    if (following) window.scrollTo(0, document.documentElement.scrollHeight);
  }

  function updateState(b) {
    if (stateEl) {
      stateEl.textContent = b.state;
      stateEl.className = "state s-" + b.state;
    }
    var fields = document.querySelectorAll("[data-f]");
    for (var i = 0; i < fields.length; i++) {
      var el = fields[i];
      var key = el.getAttribute("data-f");
      var value = key === "duration" ? duration(b) : b[key];
      if (value !== undefined && value !== null && value !== "") el.textContent = String(value);
    }
    if (TERMINAL[b.state]) {
      var cancel = document.getElementById("cancel-form");
      if (cancel) cancel.hidden = true;
      document.body.setAttribute("data-state", b.state);
    }
  }

  if (follow) {
    follow.hidden = false;
    follow.addEventListener("click", function () {
      following = !following;
      follow.setAttribute("aria-pressed", String(following));
      follow.textContent = following ? "Stop following" : "Follow";
      if (following) window.scrollTo(0, document.documentElement.scrollHeight);
    });
  }
  // A line's number (its ::before, in the left padding) links to the line.
  log.addEventListener("click", function (e) {
    var el = e.target;
    if (!el || !el.id || !el.parentNode || el.parentNode.className !== "blk") return;
    if (e.offsetX > parseFloat(getComputedStyle(el).paddingLeft)) return;
    location.hash = el.id;
  });
  if (log.getAttribute("data-live") !== "true") return;

  // SSE gives every \r as a line end, so progress lines arrive one per update. Once the build has ended, what
  // came live is read again as text and, when it had a lone \r, rendered again with the \r collapsed.
  var start = { line: line, block: block, blockLines: blockLines, section: section, logChildren: log.childElementCount,
    sectionChildren: section ? section.childElementCount : 0 };
  function redo(text) {
    while (start.block.childElementCount > start.blockLines) start.block.removeChild(start.block.lastElementChild);
    if (start.section) while (start.section.childElementCount > start.sectionChildren) start.section.removeChild(start.section.lastElementChild);
    while (log.childElementCount > start.logChildren) log.removeChild(log.lastElementChild);
    line = start.line; block = start.block; blockLines = start.blockLines; section = start.section;
    ansi = new AnsiUp();
    ansi.use_classes = true;
    render(text.replace(/\n$/, ""));
  }

  var url = log.getAttribute("data-src") + "&offset=" + offset;
  var source = new EventSource(url);
  source.addEventListener("log", function (e) {
    pending += e.data;
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(frame);
    }
  });
  source.addEventListener("state", function (e) {
    updateState(JSON.parse(e.data));
  });
  source.addEventListener("end", function () {
    source.close();
    // A last line without its line end is still a line; one that has it (its frame not yet run) gets no second.
    if (pending && pending.charAt(pending.length - 1) !== "\n") pending += "\n";
    frame();
    fetch(log.getAttribute("data-src") + "&follow=false&offset=" + offset)
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (text) { if (/\r(?!\n)/.test(text)) redo(text); })
      .catch(function () {});
    if (follow) follow.hidden = true;
    log.setAttribute("data-live", "false");
  });
})();
`;
