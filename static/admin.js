// The admin token. A server with DIGITS_ADMIN_TOKEN set answers 401 to POST /train, DELETE /train/{id}
// and POST /models/{version}/activate sent without it; only then does the Train panel show a token
// field. The token is kept in sessionStorage (this tab, until it closes) and sent as a bearer token.

import { fetchJSON } from "./api.js";
import { ui } from "./page.js";

const STORAGE_KEY = "digits.adminToken";
let remembered = "";  // the token, when sessionStorage is not available

function storedToken() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) ?? "";
  } catch {
    return remembered;
  }
}

function storeToken(token) {
  remembered = token;
  try {
    if (token) sessionStorage.setItem(STORAGE_KEY, token);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage is off (some private modes): the copy in memory lasts until the page closes.
  }
}

function askForToken() {
  ui.adminField.hidden = false;
  ui.adminToken.focus();
  ui.adminToken.select();
}

// fetchJSON for the requests that need the admin's rights: with the token, if there is one.
// On 401 the token field appears; on 403 with a token, it stays up so the token can be corrected.
export async function fetchAsAdmin(url, options = {}) {
  const token = storedToken();
  if (/[^\x21-\x7e]/.test(token)) {  // fetch refuses such header values before sending anything
    askForToken();
    throw new Error("The admin token can hold only ASCII letters, digits and punctuation.");
  }
  const headers = token ? { ...options.headers, Authorization: `Bearer ${token}` } : options.headers;
  try {
    return await fetchJSON(url, headers ? { ...options, headers } : options);
  } catch (error) {
    if (error.status === 401) {
      askForToken();
      error.message = "This server asks for its admin token: enter it above and try again.";
    } else if (error.status === 403 && token) {
      askForToken();
    }
    throw error;
  }
}

// A token remembered from earlier in this tab (the server asked for it then) is shown, ready to change.
export function initAdminToken() {
  const token = storedToken();
  if (token) {
    ui.adminToken.value = token;
    ui.adminField.hidden = false;
  }
  ui.adminToken.addEventListener("input", () => storeToken(ui.adminToken.value.trim()));
}
