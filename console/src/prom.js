// A small reader of the Prometheus text exposition format (what /metrics serves): samples as
// `{name, labels, value}`; comments, HELP and TYPE lines skipped; timestamps ignored.

function parseLabels(text, start) {
  // text[start] === '{'; returns [labels, index after '}'].
  const labels = {};
  let i = start + 1;
  for (;;) {
    while (text[i] === ' ' || text[i] === ',') i += 1;
    if (text[i] === '}') return [labels, i + 1];
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error('label without =');
    const key = text.slice(i, eq).trim();
    i = eq + 1;
    if (text[i] !== '"') throw new Error('label value not quoted');
    i += 1;
    let value = '';
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') {
        const next = text[i + 1];
        value += next === 'n' ? '\n' : next;
        i += 2;
      } else {
        value += text[i];
        i += 1;
      }
    }
    if (i >= text.length) throw new Error('unterminated label value');
    labels[key] = value;
    i += 1;
  }
}

function parseValue(s) {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  return Number(s);
}

/** Every sample in `text`; lines that do not parse are skipped. */
export function parse(text) {
  const samples = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    try {
      const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
      if (!m) continue;
      const name = m[0];
      let i = name.length;
      let labels = {};
      if (line[i] === '{') [labels, i] = parseLabels(line, i);
      const rest = line.slice(i).trim().split(/\s+/);
      const value = parseValue(rest[0]);
      if (rest[0] === undefined || (Number.isNaN(value) && rest[0] !== 'NaN')) continue;
      samples.push({ name, labels, value });
    } catch {
      // A line this reader does not understand is left out.
    }
  }
  return samples;
}

/** The sum of every sample named `name` (every label set); 0 when there is none yet. */
export function sum(samples, name) {
  let total = 0;
  for (const s of samples) if (s.name === name && Number.isFinite(s.value)) total += s.value;
  return total;
}

/** Whether any sample is named `name`. */
export function has(samples, name) {
  return samples.some((s) => s.name === name);
}
