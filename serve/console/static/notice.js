// One line at the top of the page that says how the last change went.

export function showNotice(text, kind = "ok") {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.className = kind;
  notice.hidden = false;
}

export function clearNotice() {
  document.getElementById("notice").hidden = true;
}
