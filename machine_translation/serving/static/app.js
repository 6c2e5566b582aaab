// The page: translation as you type (debounced), n-best with scores, and the
// cross-attention heat map of one sentence. Plain JavaScript, no outside resources.
"use strict";

const source = document.getElementById("source");
const output = document.getElementById("translation");
const status = document.getElementById("status");
const details = document.getElementById("details");
const nbest = document.getElementById("nbest");
const layerSelect = document.getElementById("layer");
const heatmap = document.getElementById("heatmap");

const DEBOUNCE_MS = 300;
let timer = null;
let latest = 0; // the newest request: older answers that arrive late are dropped
let explained = null;

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function update() {
  const text = source.value;
  const request = ++latest;
  if (!text.trim()) {
    output.textContent = "";
    status.textContent = "";
    details.hidden = true;
    return;
  }
  status.textContent = "translating…";
  try {
    const oneSentence = !/[\r\n]/.test(text.trim());
    const data = oneSentence
      ? await post("/explain", { q: text.trim() })
      : await post("/translate", { q: text, source: "en", target: "fr" });
    if (request !== latest) return;
    output.textContent = data.translatedText;
    status.textContent = "";
    if (oneSentence) {
      show(data);
    } else {
      details.hidden = true; // the alignment is drawn for one sentence
    }
  } catch (error) {
    if (request === latest) status.textContent = "error: " + error.message;
  }
}

function show(data) {
  explained = data;
  nbest.replaceChildren(
    ...data.translations.map((t) => {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = t.text;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = t.score === null ? "" : t.score.toFixed(3);
      item.append(text, score);
      return item;
    })
  );
  const layers = data.attention.length;
  const chosen = Math.min(Number(layerSelect.value || layers), layers);
  layerSelect.replaceChildren(
    ...data.attention.map((_, i) => new Option(`${i + 1} of ${layers}`, i + 1))
  );
  layerSelect.value = String(chosen);
  details.hidden = layers === 0;
  drawHeatmap();
}

function drawHeatmap() {
  if (!explained || explained.attention.length === 0) return;
  const weights = explained.attention[Number(layerSelect.value) - 1];
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  for (const token of explained.sourceTokens) {
    const cell = document.createElement("th");
    cell.textContent = token;
    head.append(cell);
  }
  const body = table.createTBody();
  explained.targetTokens.forEach((token, row) => {
    const line = body.insertRow();
    const label = document.createElement("th");
    label.textContent = token;
    line.append(label);
    weights[row].forEach((weight, column) => {
      const cell = line.insertCell();
      cell.style.background = `rgba(36, 64, 107, ${weight.toFixed(3)})`;
      cell.title = `${token} ← ${explained.sourceTokens[column]}: ${weight.toFixed(3)}`;
    });
  });
  heatmap.replaceChildren(table);
}

source.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(update, DEBOUNCE_MS);
});
layerSelect.addEventListener("change", drawHeatmap);
