// How numbers, sizes, times and durations read on screen.

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  n = Number(n);
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${num(n)} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** `3 d 4 h`, `2 h 5 min`, `4 min 2 s`, `12 s`. */
export function duration(secs) {
  secs = Math.max(0, Math.floor(Number(secs) || 0));
  const d = Math.floor(secs / 86400);
  const hr = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

/** Unix seconds as a local date and time, `2026-12-03 09:41`. */
export function dateTime(unixSecs) {
  if (unixSecs === null || unixSecs === undefined || !Number(unixSecs)) return '—';
  const d = new Date(Number(unixSecs) * 1000);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** Unix seconds as a date, `2026-12-03`. */
export function date(unixSecs) {
  return dateTime(unixSecs).slice(0, 10);
}

/** `in 89 days`, `in 1 day`, `today`, `3 days ago`, from `now` (unix seconds). */
export function inDays(unixSecs, now) {
  const days = Math.floor((Number(unixSecs) - now) / 86400);
  if (days === 0) return Number(unixSecs) >= now ? 'in less than a day' : 'less than a day ago';
  if (days > 0) return `in ${days} day${days === 1 ? '' : 's'}`;
  const ago = -days;
  return `${ago} day${ago === 1 ? '' : 's'} ago`;
}

/** `5 min ago`, from `now` (unix seconds). */
export function ago(unixSecs, now) {
  if (!Number(unixSecs)) return '—';
  const secs = now - Number(unixSecs);
  if (secs < 0) return `in ${duration(-secs)}`;
  return `${duration(secs)} ago`;
}

/** A number for a chart's last value: 3 significant digits, no exponent for usual sizes. */
export function num(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '';
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

export function orDash(v) {
  return v === null || v === undefined || v === '' ? '—' : String(v);
}

/** `1 space`, `3 spaces` (`plural` when not `${word}s`). */
export function count(n, word, plural = `${word}s`) {
  return `${n} ${Number(n) === 1 ? word : plural}`;
}
