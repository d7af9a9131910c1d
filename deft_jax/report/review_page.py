"""The review page's HTML, CSS and JavaScript (vanilla, no network): report/review.py fills in the data.

The page reads its data from one embedded JSON block (``<script type="application/json" id="review-data">``):
``{title, run_key, class_names, rows: [{r, i, id, g, s, ls, pc, t}], pairs: [{g, s, n}]}`` where a row is rank,
index, id, given label, suggested label, label_score, p_clean and its thumbnail (a data URI, or null for a
placeholder). Decisions live in the browser's localStorage under ``deft_jax_review:<run_key>``.
"""

CSS = r"""
body{font:14px/1.35 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:8px 12px;z-index:2}
h1{font-size:17px;margin:0 0 6px}
.bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center}
.keys{color:#555;font-size:12px}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 4px;background:#f3f3f3;font-size:12px}
main{display:flex;gap:12px;padding:12px;align-items:flex-start}
#pairs-box{min-width:240px;max-height:80vh;overflow:auto;background:#fff;border:1px solid #ddd;padding:6px}
#pairs td{padding:2px 6px;cursor:pointer}
#pairs tr.pair:hover{background:#eef}#pairs tr.on{background:#cde}
#rows{border-collapse:collapse;background:#fff}
#rows th,#rows td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:middle}
#rows tr.cur{outline:2px solid #36c;outline-offset:-2px}
#rows tr.hidden{display:none}
#rows tr.d-relabel{background:#eaf6ea}#rows tr.d-keep{background:#eef2fb}#rows tr.d-drop{background:#fbeaea}
img.thumb,.ph{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;display:block;background:#eee}
.ph{display:flex;align-items:center;justify-content:center;color:#888;font-size:11px;border:1px dashed #bbb;
box-sizing:border-box}
td.id{max-width:260px;overflow-wrap:anywhere;font-size:12px;color:#555}
td.num{font-variant-numeric:tabular-nums}
.dec{font-weight:600}
button{cursor:pointer}
"""

BODY = r"""
<header>
<h1 id="title"></h1>
<div class="bar">
<label>given <select id="f-given"><option value="">any</option></select></label>
<label>suggested <select id="f-sugg"><option value="">any</option></select></label>
<label>show <select id="f-dec"><option value="">all</option><option value="open">undecided</option>
<option value="done">decided</option></select></label>
<label>sort <select id="sort"><option value="asc">most suspect first</option>
<option value="desc">least suspect first</option></select></label>
<button id="clear">clear filters</button>
<span id="count"></span>
<button id="export">export corrections.csv</button>
</div>
<div class="keys">keys: <kbd>r</kbd> relabel to the suggested class, <kbd>k</kbd> keep the given label,
<kbd>d</kbd> drop the image, <kbd>u</kbd> undo, <kbd>n</kbd>/<kbd>&darr;</kbd> next, <kbd>p</kbd>/<kbd>&uarr;</kbd>
previous. Decisions are kept in this browser for this run.</div>
</header>
<main>
<div id="pairs-box"><b>given &rarr; suggested</b> (flagged)<table id="pairs"><tbody></tbody></table></div>
<table id="rows"><thead><tr><th>image</th><th>rank</th><th>index</th><th>id / path</th><th>given</th>
<th>suggested</th><th>label_score</th><th>p_clean</th><th>decide</th><th>decision</th></tr></thead>
<tbody></tbody></table>
</main>
"""

JS = r"""
(function(){
'use strict';
const D = JSON.parse(document.getElementById('review-data').textContent);
const N = D.class_names, KEY = 'deft_jax_review:' + D.run_key;
const $ = s => document.querySelector(s);
const esc = s => String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
let dec = {};
try { dec = JSON.parse(localStorage.getItem(KEY) || '{}') || {}; } catch (e) { dec = {}; }
const save = () => { try { localStorage.setItem(KEY, JSON.stringify(dec)); } catch (e) {} };
const byIndex = {};
D.rows.forEach(r => { byIndex[r.i] = r; });
$('#title').textContent = D.title;
document.title = D.title;

function rowHtml(r) {
  const img = r.t ? '<img class="thumb" alt="" src="' + r.t + '">' : '<div class="ph">no image</div>';
  return '<tr data-i="' + r.i + '" data-g="' + r.g + '" data-s="' + r.s + '"><td>' + img + '</td><td class="num">' +
    r.r + '</td><td class="num">' + r.i + '</td><td class="id">' + esc(r.id) + '</td><td>' + esc(N[r.g]) +
    '</td><td>' + esc(N[r.s]) + '</td><td class="num">' + r.ls.toFixed(4) + '</td><td class="num">' +
    r.pc.toFixed(4) + '</td><td><button data-a="relabel">&rarr; ' + esc(N[r.s]) + '</button> ' +
    '<select class="other" title="relabel to another class"><option value="">other&hellip;</option></select> ' +
    '<button data-a="keep">keep</button> <button data-a="drop">drop</button></td><td class="dec"></td></tr>';
}
const tbody = $('#rows tbody');
tbody.innerHTML = D.rows.map(rowHtml).join('');
const trs = Array.from(tbody.children);
const trOf = {};
trs.forEach(tr => { trOf[tr.dataset.i] = tr; });

function show(tr) {
  const d = dec[tr.dataset.i], cell = tr.lastElementChild;
  tr.classList.remove('d-relabel', 'd-keep', 'd-drop');
  if (!d) { cell.textContent = ''; return; }
  tr.classList.add('d-' + d.a);
  cell.textContent = d.a === 'relabel' ? 'relabel \u2192 ' + N[d.l] : d.a;
}
function decide(tr, a, label) {
  const i = tr.dataset.i;
  if (!a) delete dec[i];
  else dec[i] = a === 'relabel' ? {a: a, l: label} : {a: a};
  save(); show(tr); counts();
}
trs.forEach(show);

const names = used => '<option value="">any</option>' + used.map(k => '<option value="' + k + '">' + esc(N[k]) +
  '</option>').join('');
const uniq = key => Array.from(new Set(D.rows.map(r => r[key]))).sort((a, b) => a - b);
$('#f-given').innerHTML = names(uniq('g'));
$('#f-sugg').innerHTML = names(uniq('s'));
$('#pairs tbody').innerHTML = D.pairs.map(p => '<tr class="pair" data-g="' + p.g + '" data-s="' + p.s + '"><td>' +
  esc(N[p.g]) + ' &rarr; ' + esc(N[p.s]) + '</td><td class="num">' + p.n + '</td></tr>').join('') ||
  '<tr><td>no flagged example with another suggestion</td></tr>';

let visible = [], cur = -1;
function apply() {
  const g = $('#f-given').value, s = $('#f-sugg').value, f = $('#f-dec').value;
  const order = $('#sort').value === 'desc' ? trs.slice().reverse() : trs;
  order.forEach(tr => tbody.appendChild(tr));
  visible = [];
  order.forEach(tr => {
    const done = tr.dataset.i in dec;
    const ok = (!g || tr.dataset.g === g) && (!s || tr.dataset.s === s) && (!f || (f === 'done') === done);
    tr.classList.toggle('hidden', !ok);
    if (ok) visible.push(tr);
  });
  document.querySelectorAll('#pairs tr.pair').forEach(p => p.classList.toggle('on', p.dataset.g === g &&
    p.dataset.s === s));
  setCur(visible.length ? 0 : -1, false);
  counts();
}
function counts() {
  $('#count').textContent = visible.length + ' of ' + D.rows.length + ' shown, ' + Object.keys(dec).length +
    ' decided';
}
function setCur(k, scroll) {
  if (cur >= 0 && visible[cur]) visible[cur].classList.remove('cur');
  cur = k;
  if (cur < 0 || !visible[cur]) return;
  visible[cur].classList.add('cur');
  if (scroll) visible[cur].scrollIntoView({block: 'nearest'});
}
['#f-given', '#f-sugg', '#f-dec', '#sort'].forEach(id => $(id).addEventListener('change', apply));
$('#clear').addEventListener('click', () => { $('#f-given').value = ''; $('#f-sugg').value = '';
  $('#f-dec').value = ''; apply(); });
$('#pairs').addEventListener('click', e => {
  const p = e.target.closest('tr.pair');
  if (!p) return;
  const on = p.classList.contains('on');
  $('#f-given').value = on ? '' : p.dataset.g;
  $('#f-sugg').value = on ? '' : p.dataset.s;
  apply();
});
tbody.addEventListener('mousedown', e => {
  const sel = e.target.closest('select.other');
  if (sel && sel.options.length === 1) {
    sel.insertAdjacentHTML('beforeend', N.map((n, k) => '<option value="' + k + '">' + esc(n) + '</option>').join(''));
  }
});
tbody.addEventListener('focusin', e => {
  if (e.target.matches('select.other')) e.target.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));
});
tbody.addEventListener('click', e => {
  const tr = e.target.closest('tr');
  if (!tr) return;
  const k = visible.indexOf(tr);
  if (k >= 0) setCur(k, false);
  const b = e.target.closest('button');
  if (b) decide(tr, b.dataset.a, b.dataset.a === 'relabel' ? byIndex[tr.dataset.i].s : undefined);
});
tbody.addEventListener('change', e => {
  if (!e.target.matches('select.other') || e.target.value === '') return;
  decide(e.target.closest('tr'), 'relabel', Number(e.target.value));
});
document.addEventListener('keydown', e => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.matches('select, input, textarea')) return;
  const tr = visible[cur], key = e.key;
  const move = d => setCur(Math.max(0, Math.min(visible.length - 1, cur + d)), true);
  if (key === 'n' || key === 'j' || key === 'ArrowDown') move(1);
  else if (key === 'p' || key === 'ArrowUp') move(-1);
  else if (!tr) return;
  else if (key === 'r') { decide(tr, 'relabel', byIndex[tr.dataset.i].s); move(1); }
  else if (key === 'k') { decide(tr, 'keep'); move(1); }
  else if (key === 'd' || key === 'x') { decide(tr, 'drop'); move(1); }
  else if (key === 'u') decide(tr, null);
  else return;
  e.preventDefault();
});
function csvField(v) {
  const s = String(v);
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
$('#export').addEventListener('click', () => {
  const lines = ['index,id,given_label,new_label,action'];
  Object.keys(dec).map(Number).sort((a, b) => a - b).forEach(i => {
    const r = byIndex[i], d = dec[i];
    if (!r) return;
    lines.push([i, r.id, N[r.g], d.a === 'relabel' ? N[d.l] : '', d.a].map(csvField).join(','));
  });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], {type: 'text/csv'}));
  a.download = 'corrections.csv';
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
});
apply();
window.deftReviewReady = true;
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>deft_jax review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body>{body}
<script type="application/json" id="review-data">{data}</script>
<script>{js}</script>
</body></html>
"""
