// Talking to the server: JSON in and out, with a timeout and errors whose message a person can read
// (the server's `detail` when it gives one).

const REQUEST_TIMEOUT_MS = 10000;

function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((item) => item?.msg ?? JSON.stringify(item)).join("; ");
  return detail == null ? "" : JSON.stringify(detail);
}

// A Retry-After header in whole seconds (the form this server sends), or null when absent or unreadable.
function retryAfterSeconds(header) {
  return /^\s*\d+\s*$/.test(header ?? "") ? Number(header) : null;
}

// GET or POST JSON; resolves to the parsed answer, or rejects with an Error whose message is readable
// and whose `status` is the HTTP status, if there was an answer, with `retryAfter` from its header.
export async function fetchJSON(url, options = {}) {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    let response;
    try {
      response = await fetch(url, { ...options, signal: controller.signal });
    } catch (error) {
      throw new Error(error.name === "AbortError" ? "the server took too long to answer"
                                                 : "can't reach the server; is it running?");
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error(describeDetail(data?.detail) ||
                              `the server answered ${response.status} ${response.statusText}`);
      error.status = response.status;
      error.retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
      throw error;
    }
    if (data === null) throw new Error("the server's answer was not JSON");
    return data;
  } finally {
    clearTimeout(timeout);
  }
}

// POST a JSON body.
export function postJSON(url, body, options = {}) {
  return fetchJSON(url, {
    ...options,
    method: "POST",
    headers: { "Content-Type": "application/json", ...options.headers },
    body: JSON.stringify(body),
  });
}
