/* Fleetdash — app.js: small progressive enhancements, no dependencies.
 * Every page works without it (forms post, <details> menus open); this only adds comfort.
 * Everything is delegated from `document`, so content swapped in by htmx needs no re-binding.
 *
 * DROPDOWNS   <details class="dropdown"><summary>…</summary><div class="dropdown-menu">…</div></details>
 *   opening one closes the others; Escape / outside click / choosing an item closes it;
 *   ArrowUp/ArrowDown/Home/End move between .dropdown-item; an open menu fits the viewport
 *   (opens upward when there is more room above, else scrolls inside a max-height); menus inside
 *   a .table-wrap (or with data-fixed) are positioned over the page so the scroll box does not clip them.
 * DIALOGS
 *   [data-dialog-open="ID"]     click: document.getElementById(ID).showModal()
 *   [data-dialog-close]         click: close the enclosing <dialog>
 *   dialog[data-dialog-autoopen] opens itself when it appears (e.g. swapped in by htmx)
 *   form[data-close-on-success] inside a dialog: the dialog closes after a successful htmx request
 *   clicking the backdrop closes; closing resets the dialog's forms.
 * TYPED CONFIRMATION
 *   input[data-confirm-text="exact text"]  the submit buttons of its form (in the same dialog,
 *   if it sits in one) stay disabled until the value equals the attribute exactly.
 *   A submit button with [data-keep-disabled] is never enabled by this (the server said no).
 * ROW SELECTION (device tables)
 *   table[data-selectable][id]        the table (give it an id so the state survives swaps)
 *     data-total="1234"                how many rows match the filters (M); may sit on the bar instead
 *     data-selection-key="…"           optional: selection resets when a swapped-in table has another key
 *   th input[type=checkbox][data-select-page]   select / deselect every row on this page
 *   td input[type=checkbox][name=ids][value=…]  one per row; Shift+click selects a range
 *   [data-selection-bar]              shown while something is selected; inside it:
 *     [data-selection-count]          "N selected" / "All M matching selected"
 *     [data-select-all-matching]      "Select all M matching" (shown while M > N)
 *       data-total-src="url"          M is not known up front: it is fetched (GET, JSON {"count": M})
 *                                     the first time something is selected, then kept for that
 *                                     selection key (a page never pays for counting until then)
 *     [data-select-clear]             clears the selection
 *   input[type=hidden][name=all_matching]  set to "1" when all M matching are selected, else "";
 *                                     a form submitted with all_matching=1 sends no ids (the filter says it)
 *   [data-selection-required]         disabled while nothing is selected
 *   The table, bar and hidden input share a scope: the closest [data-selection-scope], else the
 *   closest <form>. Selected ids of rows no longer on the page are kept as hidden name=ids inputs.
 *   Fires "selection:change" on the table with detail {count, ids, allMatching}.
 * TOASTS
 *   .toast in #toasts: success/info/debug hide after 5 s (paused while hovered); [data-toast-close] closes.
 *   htmx response header  HX-Trigger: {"toast": {"level": "success", "message": "…"}}  shows one;
 *   so does  Fleetdash.toast(level, message)  from scripts.
 * COPY
 *   [data-copy="text"]   click copies the text; the element gets [data-copied] for 1.5 s ("Copied").
 * DISABLED WITH A REASON
 *   [aria-disabled="true"]  clicks are swallowed (use with title="why" so the reason shows on hover).
 */
(function () {
  "use strict";

  var AUTOHIDE_MS = 5000;
  var keyboardMode = false;

  function qsa(root, sel) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  document.addEventListener("keydown", function () { keyboardMode = true; }, true);
  document.addEventListener("pointerdown", function () { keyboardMode = false; }, true);

  /* ------------------------------------------------------------------ dropdowns */

  function menuItems(dd) {
    return qsa(dd, ".dropdown-menu .dropdown-item").filter(function (el) {
      return !el.disabled && el.closest("details.dropdown") === dd;
    });
  }

  function closeDropdown(dd, restoreFocus) {
    if (!dd.open) return;
    dd.open = false;
    if (restoreFocus) { var s = dd.querySelector("summary"); if (s) s.focus(); }
  }

  // Keeps an open menu inside the viewport: it opens on the side of its button with room for it
  // (below unless .dropdown-up), or, when neither side has room, on the roomier side with a
  // max-height and its own scrollbar. Never under the sticky top bar. Menus inside a .table-wrap
  // (or with data-fixed) are positioned over the page so the scroll box does not clip them.
  function placeMenu(dd) {
    var menu = dd.querySelector(".dropdown-menu");
    var summary = dd.querySelector("summary");
    if (!menu || !summary) return;
    menu.classList.remove("is-up", "is-down");
    menu.style.maxHeight = "";
    var fixed = dd.hasAttribute("data-fixed") || !!dd.closest(".table-wrap");
    if (fixed) menu.classList.add("is-fixed");
    var gap = 4, margin = 8;
    var topbar = document.querySelector(".topbar");
    var ceiling = topbar && getComputedStyle(topbar).position !== "static" ? topbar.getBoundingClientRect().bottom : 0;
    var r = summary.getBoundingClientRect();
    var h = menu.scrollHeight;
    var below = window.innerHeight - r.bottom - gap - margin;
    var above = r.top - gap - margin - Math.max(0, ceiling);
    var up = dd.classList.contains("dropdown-up");
    if (up ? h > above && below > above : h > below && above > below) up = !up;
    var room = Math.max(up ? above : below, 120);
    if (h > room) menu.style.maxHeight = room + "px";
    menu.classList.add(up ? "is-up" : "is-down");
    if (!fixed) return;
    var m = menu.getBoundingClientRect();
    var left = dd.classList.contains("dropdown-end") ? r.right - m.width : r.left;
    left = Math.max(margin, Math.min(left, window.innerWidth - m.width - margin));
    menu.style.left = left + "px";
    menu.style.top = (up ? r.top - gap - Math.min(h, room) : r.bottom + gap) + "px";
    menu.style.right = "auto";
  }

  document.addEventListener("toggle", function (e) {
    var dd = e.target;
    if (!(dd instanceof HTMLDetailsElement) || !dd.classList.contains("dropdown")) return;
    if (!dd.open) return;
    qsa(document, "details.dropdown[open]").forEach(function (other) {
      if (other !== dd && !other.contains(dd)) other.open = false;
    });
    placeMenu(dd);
    if (keyboardMode) { var items = menuItems(dd); if (items.length) items[0].focus(); }
  }, true);

  // A fixed-position menu would float away from its button when its scroll box scrolls.
  document.addEventListener("scroll", function (e) {
    qsa(document, "details.dropdown[open] > .dropdown-menu.is-fixed").forEach(function (menu) {
      if (!menu.contains(e.target)) menu.parentElement.open = false;
    });
  }, true);
  window.addEventListener("resize", function () {
    qsa(document, "details.dropdown[open] > .dropdown-menu.is-fixed").forEach(function (m) { m.parentElement.open = false; });
  });

  document.addEventListener("keydown", function (e) {
    var dd = e.target.closest && e.target.closest("details.dropdown");
    if (e.key === "Escape") {
      var open = dd && dd.open ? dd : null;
      if (!open) {
        // Leave Escape to an open modal unless the menu sits inside it.
        var modal = document.querySelector("dialog[open]");
        open = qsa(document, "details.dropdown[open]").filter(function (d) { return !modal || modal.contains(d); }).pop();
      }
      if (open) { e.preventDefault(); closeDropdown(open, true); }
      return;
    }
    if (!dd) return;
    var keys = ["ArrowDown", "ArrowUp", "Home", "End"];
    if (keys.indexOf(e.key) === -1) return;
    var items = menuItems(dd);
    if (!items.length) return;
    if (!dd.open) {
      if (e.key !== "ArrowDown" || e.target.tagName !== "SUMMARY") return;
      dd.open = true; // the toggle handler focuses the first item
      e.preventDefault();
      return;
    }
    e.preventDefault();
    var i = items.indexOf(document.activeElement);
    if (e.key === "Home") i = 0;
    else if (e.key === "End") i = items.length - 1;
    else if (e.key === "ArrowDown") i = i < 0 ? 0 : (i + 1) % items.length;
    else i = i <= 0 ? items.length - 1 : i - 1;
    items[i].focus();
  });

  /* ------------------------------------------------------------------ dialogs */

  function openDialog(dlg) {
    if (!dlg || dlg.open || typeof dlg.showModal !== "function") return;
    // Fields bound to an outside form (form="…") only take part while their dialog is open.
    qsa(dlg, "input[form], select[form], textarea[form]").forEach(function (el) { el.disabled = false; });
    qsa(dlg, "form").forEach(syncConfirm);
    qsa(dlg, "[data-confirm-text]").forEach(function (el) { if (el.form) syncConfirm(el.form, el); });
    dlg.showModal();
  }

  document.addEventListener("close", function (e) {
    var dlg = e.target;
    if (!(dlg instanceof HTMLDialogElement)) return;
    qsa(dlg, "form").forEach(function (f) { f.reset(); syncConfirm(f); });
    qsa(dlg, "input[form], select[form], textarea[form]").forEach(function (el) {
      if (el.hasAttribute("data-confirm-text")) el.value = "";
      el.disabled = true;
    });
  }, true);

  function onAfterRequest(e) {
    var form = e.target.closest && e.target.closest("form[data-close-on-success]");
    var dlg = form && form.closest("dialog");
    if (dlg && e.detail && e.detail.successful) dlg.close();
  }

  /* ------------------------------------------------------------------ typed confirmation */

  function submitButtons(form, within) {
    return Array.prototype.filter.call(form.elements, function (el) {
      return el.type === "submit" && (!within || within.contains(el));
    });
  }

  // Keeps the submit buttons of `form` (only those in the same dialog as `input`, when it sits
  // in one) disabled until every typed-confirmation input there matches exactly.
  function syncConfirm(form, input) {
    if (!form || !form.elements) return;
    var within = input ? input.closest("dialog") : null;
    var inputs = Array.prototype.filter.call(form.elements, function (el) {
      return el.hasAttribute && el.hasAttribute("data-confirm-text") && (!within || within.contains(el)) && !el.disabled;
    });
    if (!input && !inputs.length) return;
    var ok = inputs.every(function (el) { return el.value === el.getAttribute("data-confirm-text"); });
    submitButtons(form, within).forEach(function (b) {
      b.disabled = !ok || b.hasAttribute("data-keep-disabled");
    });
  }

  document.addEventListener("input", function (e) {
    var el = e.target;
    if (el.hasAttribute && el.hasAttribute("data-confirm-text") && el.form) syncConfirm(el.form, el);
  });

  document.addEventListener("submit", function (e) {
    var form = e.target;
    var bad = Array.prototype.some.call(form.elements, function (el) {
      return el.hasAttribute && el.hasAttribute("data-confirm-text") && !el.disabled &&
        el.value !== el.getAttribute("data-confirm-text");
    });
    if (bad) { e.preventDefault(); e.stopPropagation(); }
  }, true);

  /* ------------------------------------------------------------------ row selection */

  var selections = {}; // table key -> {ids: Set, all: bool, key: string|null}
  var lastClicked = {}; // table key -> index of the last row checkbox clicked

  function tableKey(table) {
    if (!table.id) table.id = "selectable-" + (qsa(document, "table[data-selectable]").indexOf(table) + 1);
    return table.id;
  }
  function scopeOf(table) { return table.closest("[data-selection-scope]") || table.closest("form") || document; }
  function rowBoxes(table) { return qsa(table, "tbody input[type=checkbox][name=ids]").filter(function (b) { return !b.disabled; }); }

  function stateOf(table) {
    var key = tableKey(table);
    var selKey = table.getAttribute("data-selection-key");
    var st = selections[key];
    if (!st || (selKey !== null && st.key !== null && st.key !== selKey)) {
      st = selections[key] = { ids: new Set(), all: false, key: selKey };
      // Keep what the browser restored (back button) or the server pre-checked.
      rowBoxes(table).forEach(function (b) { if (b.checked) st.ids.add(b.value); });
      var hidden = scopeOf(table).querySelector("input[name=all_matching]");
      if (hidden && hidden.value === "1") st.all = true;
    }
    st.key = selKey;
    return st;
  }

  function totalOf(table, scope) {
    var holder = [table, scope.querySelector("[data-selection-bar]"), scope.querySelector("[data-select-all-matching]")]
      .filter(function (el) { return el && el.hasAttribute && el.hasAttribute("data-total"); })[0];
    var n = holder ? parseInt(holder.getAttribute("data-total"), 10) : NaN;
    if (isNaN(n)) n = stateOf(table).total;
    return typeof n === "number" && !isNaN(n) ? n : null;
  }

  // Counts the rows matching the filters once per selection key, when a selection starts.
  function loadTotal(table, scope, st) {
    var src = scope.querySelector("[data-total-src]");
    if (!src || st.loading || st.total !== undefined) return;
    st.loading = true;
    fetch(src.getAttribute("data-total-src"), { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        st.loading = false;
        st.total = Number(data.count);
        if (table.isConnected) renderSelection(table);
        else qsa(document, "table[data-selectable]").forEach(renderSelection);
      }, function () {
        st.loading = false;
        st.total = null; // not retried for this selection: "select all matching" stays hidden
        showToast("warning", "Could not count the matching devices; select them page by page.");
      });
  }

  function renderSelection(table) {
    var st = stateOf(table);
    var scope = scopeOf(table);
    var boxes = rowBoxes(table);
    boxes.forEach(function (b) {
      b.checked = st.all || st.ids.has(b.value);
      var tr = b.closest("tr");
      if (tr) tr.classList.toggle("is-selected", b.checked);
    });
    var onPage = boxes.filter(function (b) { return b.checked; }).length;
    var head = table.querySelector("[data-select-page]");
    if (head) {
      head.checked = boxes.length > 0 && onPage === boxes.length;
      head.indeterminate = onPage > 0 && onPage < boxes.length;
    }
    var total = totalOf(table, scope);
    var count = st.all && total !== null ? total : st.ids.size;
    if (count > 0 && total === null) loadTotal(table, scope, st);

    // Ids chosen on other pages still need to be posted.
    var key = tableKey(table);
    var form = table.closest("form") || (boxes[0] && boxes[0].form) || (scope.tagName === "FORM" ? scope : null);
    qsa(document, "input[data-selection-carry]").forEach(function (el) {
      if (el.getAttribute("data-selection-carry") === key) el.remove();
    });
    if (form && !st.all) {
      var visible = new Set(boxes.map(function (b) { return b.value; }));
      st.ids.forEach(function (id) {
        if (visible.has(id)) return;
        var h = document.createElement("input");
        h.type = "hidden"; h.name = "ids"; h.value = id; h.setAttribute("data-selection-carry", key);
        if (form.contains(table)) form.appendChild(h);
        else if (form.id) { h.setAttribute("form", form.id); document.body.appendChild(h); }
      });
    }

    var hidden = scope.querySelector("input[name=all_matching]");
    if (hidden) hidden.value = st.all ? "1" : "";

    var bar = scope.querySelector("[data-selection-bar]");
    if (bar) {
      bar.hidden = count === 0;
      var label = bar.querySelector("[data-selection-count]");
      if (label) label.textContent = st.all && total !== null ? "All " + fmt(total) + " matching selected" : fmt(count) + " selected";
      var all = bar.querySelector("[data-select-all-matching]");
      if (all) {
        var counting = total === null && st.loading;
        all.hidden = st.all || (total === null && !counting) || (total !== null && total <= count);
        all.disabled = counting;
        if (total !== null) all.textContent = "Select all " + fmt(total) + " matching";
        else if (counting) all.textContent = "Counting all matching…";
        all.setAttribute("aria-pressed", st.all ? "true" : "false");
      }
      qsa(bar, ".sep[data-for-select-all]").forEach(function (s) { s.hidden = all ? all.hidden : true; });
    }
    qsa(scope, "[data-selection-required]").forEach(function (el) {
      if (el.tagName === "DETAILS") {
        if (count === 0) el.open = false;
        var s = el.querySelector("summary");
        if (s) s.setAttribute("aria-disabled", count === 0 ? "true" : "false");
      } else if ("disabled" in el) el.disabled = count === 0;
      else el.setAttribute("aria-disabled", count === 0 ? "true" : "false");
    });
    table.dispatchEvent(new CustomEvent("selection:change", {
      bubbles: true, detail: { count: count, ids: Array.from(st.ids), allMatching: st.all }
    }));
  }

  function tableOfControl(el) {
    var t = el.closest("table[data-selectable]");
    if (t) return t;
    var scope = el.closest("[data-selection-scope]") || el.closest("form");
    return scope ? scope.querySelector("table[data-selectable]") : document.querySelector("table[data-selectable]");
  }

  document.addEventListener("click", function (e) {
    var box = e.target.closest && e.target.closest("table[data-selectable] tbody input[type=checkbox][name=ids]");
    if (!box) return;
    var table = box.closest("table");
    var key = tableKey(table);
    var boxes = rowBoxes(table);
    var i = boxes.indexOf(box);
    if (e.shiftKey && lastClicked[key] !== undefined && lastClicked[key] < boxes.length) {
      var a = Math.min(i, lastClicked[key]), b = Math.max(i, lastClicked[key]);
      for (var j = a; j <= b; j++) boxes[j].checked = box.checked;
    }
    lastClicked[key] = i;
  });

  document.addEventListener("change", function (e) {
    var el = e.target;
    if (!el.matches) return;
    if (el.matches("table[data-selectable] input[type=checkbox][name=ids], table[data-selectable] [data-select-page]")) {
      var table = el.closest("table");
      var st = stateOf(table);
      var boxes = rowBoxes(table);
      if (el.hasAttribute("data-select-page")) boxes.forEach(function (b) { b.checked = el.checked; });
      var anyUnchecked = false;
      boxes.forEach(function (b) {
        if (b.checked) st.ids.add(b.value); else { st.ids.delete(b.value); anyUnchecked = true; }
      });
      if (anyUnchecked) st.all = false;
      renderSelection(table);
    }
  });

  // "All M matching" travels as the filter: the ids ticked on this page stay out of the request.
  document.addEventListener("formdata", function (e) {
    if (e.formData.get("all_matching") === "1") e.formData.delete("ids");
  }, true);

  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("[data-select-all-matching], [data-select-clear]");
    if (!btn) return;
    var table = tableOfControl(btn);
    if (!table) return;
    e.preventDefault();
    var st = stateOf(table);
    if (btn.hasAttribute("data-select-clear")) { st.ids.clear(); st.all = false; }
    else { st.all = true; rowBoxes(table).forEach(function (b) { st.ids.add(b.value); }); }
    renderSelection(table);
  });

  /* ------------------------------------------------------------------ toasts */

  function dismissToast(t) {
    if (!t || t.classList.contains("is-leaving")) return;
    clearTimeout(t._hideTimer);
    var reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    if (reduce) { t.remove(); return; }
    t.classList.add("is-leaving");
    t.addEventListener("animationend", function () { t.remove(); }, { once: true });
    setTimeout(function () { t.remove(); }, 400);
  }

  function armToast(t) {
    if (t._armed) return;
    t._armed = true;
    var auto = t.matches(".toast-success, .toast-info, .toast-debug, [data-autohide]") && !t.hasAttribute("data-sticky");
    if (!auto) return;
    var start = function (ms) { clearTimeout(t._hideTimer); t._hideTimer = setTimeout(function () { dismissToast(t); }, ms); };
    start(AUTOHIDE_MS);
    t.addEventListener("mouseenter", function () { clearTimeout(t._hideTimer); });
    t.addEventListener("mouseleave", function () { start(2000); });
    t.addEventListener("focusin", function () { clearTimeout(t._hideTimer); });
  }

  function showToast(level, message) {
    var host = document.getElementById("toasts");
    if (!host || !message) return null;
    var lvl = ["success", "info", "warning", "error", "debug"].indexOf(level) >= 0 ? level : (level === "danger" ? "error" : "info");
    var t = document.createElement("div");
    t.className = "toast toast-" + lvl;
    t.setAttribute("role", lvl === "error" || lvl === "warning" ? "alert" : "status");
    var icon = document.createElement("span"); icon.className = "toast-icon"; icon.setAttribute("aria-hidden", "true");
    var body = document.createElement("div"); body.className = "toast-body"; body.textContent = String(message);
    var close = document.createElement("button");
    close.type = "button"; close.className = "toast-close"; close.setAttribute("data-toast-close", "");
    close.setAttribute("aria-label", "Dismiss"); close.textContent = "\u00d7";
    t.appendChild(icon); t.appendChild(body); t.appendChild(close);
    host.appendChild(t);
    armToast(t);
    return t;
  }

  document.addEventListener("click", function (e) {
    var c = e.target.closest && e.target.closest("[data-toast-close]");
    if (c) dismissToast(c.closest(".toast"));
  });

  // HX-Trigger: {"toast": {"level": "...", "message": "..."}} -> event "toast" bubbling to document.
  document.addEventListener("toast", function (e) {
    var d = e.detail || {};
    if (typeof d.value === "string") showToast("info", d.value);
    else showToast(d.level, d.message);
  });

  /* ------------------------------------------------------------------ copy to clipboard */

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return copyWithSelection(text); });
    }
    return copyWithSelection(text);
  }

  // Plain-http deployments have no Clipboard API: fall back to a selected, hidden textarea.
  function copyWithSelection(text) {
    return new Promise(function (resolve, reject) {
      var ta = document.createElement("textarea");
      ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "fixed"; ta.style.opacity = "0";
      document.body.appendChild(ta); ta.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
      ta.remove();
      if (ok) resolve(); else reject(new Error("copy failed"));
    });
  }

  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("[data-copy]");
    if (!btn) return;
    e.preventDefault();
    var text = btn.getAttribute("data-copy");
    copyText(text).then(function () {
      var label = btn.getAttribute("aria-label");
      btn.setAttribute("data-copied", "");
      btn.setAttribute("aria-label", "Copied");
      clearTimeout(btn._copyTimer);
      btn._copyTimer = setTimeout(function () {
        btn.removeAttribute("data-copied");
        if (label === null) btn.removeAttribute("aria-label"); else btn.setAttribute("aria-label", label);
      }, 1500);
    }, function () { showToast("warning", "Could not copy. Select the text and copy it by hand."); });
  });

  /* ------------------------------------------------------------------ clicks: dialogs, menus, disabled */

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!t.closest) return;

    // Dropdowns: a click anywhere else closes every open menu.
    qsa(document, "details.dropdown[open]").forEach(function (dd) {
      if (!dd.contains(t)) dd.open = false;
    });

    // Swallow clicks on controls that look disabled but stay focusable to explain why.
    if (t.closest("[aria-disabled='true']")) { e.preventDefault(); e.stopImmediatePropagation(); return; }

    var opener = t.closest("[data-dialog-open]");
    if (opener) {
      e.preventDefault();
      var dd = opener.closest("details.dropdown");
      if (dd) dd.open = false;
      openDialog(document.getElementById(opener.getAttribute("data-dialog-open")));
      return;
    }
    var closer = t.closest("[data-dialog-close]");
    if (closer) {
      var dlg = closer.closest("dialog");
      if (dlg) { e.preventDefault(); dlg.close(); }
      return;
    }
    // A click on the backdrop lands on the <dialog> itself, outside its box.
    if (t instanceof HTMLDialogElement && t.open) {
      var r = t.getBoundingClientRect();
      var inside = e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom;
      if (!inside && e.clientX !== 0 && e.clientY !== 0) t.close();
      return;
    }

    // Choosing an item closes its menu (after the item's own action has run).
    var item = t.closest(".dropdown-item");
    var current = t.closest("details.dropdown");
    if (item && current && !item.disabled) setTimeout(function () { current.open = false; }, 0);
  }, true);

  /* ------------------------------------------------------------------ init & htmx */

  function markCurrentNav() {
    var items = qsa(document, ".sidenav a.nav-item");
    if (!items.length || items.some(function (a) { return a.hasAttribute("aria-current"); })) return;
    var path = location.pathname, best = null, bestLen = 0;
    items.forEach(function (a) {
      var p = a.getAttribute("href") || "";
      if (p.charAt(0) !== "/" || p === "/") return;
      if (path.indexOf(p) === 0 && p.length > bestLen) { best = a; bestLen = p.length; }
    });
    if (best) best.setAttribute("aria-current", "page");
  }

  function init(root) {
    root = root && root.querySelectorAll ? root : document;
    qsa(document, "#toasts .toast").forEach(armToast);
    qsa(document, "table[data-selectable]").forEach(renderSelection);
    qsa(root, "[data-confirm-text]").forEach(function (el) {
      if (el.form && !el.disabled) syncConfirm(el.form, el);
    });
    var dialogs = qsa(root, "dialog[data-dialog-autoopen]");
    if (root.matches && root.matches("dialog[data-dialog-autoopen]")) dialogs.push(root);
    dialogs.forEach(function (d) { d.removeAttribute("data-dialog-autoopen"); openDialog(d); });
  }

  function boot() {
    markCurrentNav();
    init(document);
    var host = document.getElementById("toasts");
    if (host && window.MutationObserver) {
      new MutationObserver(function () { qsa(host, ".toast").forEach(armToast); })
        .observe(host, { childList: true });
    }
    document.body.addEventListener("htmx:afterRequest", onAfterRequest);
    // htmx:load fires for every piece of new content, after its swap settles.
    document.body.addEventListener("htmx:load", function (e) { init(e.target); });
    document.body.addEventListener("htmx:afterSwap", function () {
      qsa(document, "table[data-selectable]").forEach(renderSelection);
    });
  }

  window.Fleetdash = { toast: showToast, openDialog: openDialog, refreshSelection: function () { init(document); } };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
