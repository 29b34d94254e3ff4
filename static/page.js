// The page's elements and its one mutable state object, shared by the other modules, plus the two
// small helpers more than one of them needs. Nothing here talks to the server or draws.

export const ACTIVE_JOB_STATES = ["queued", "running"];

export const $ = (id) => document.getElementById(id);

export const percent = (p) => `${(p * 100).toFixed(1)}%`;

export const ui = {
  pad: $("pad"),
  padFrame: $("pad-frame"),
  undo: $("undo"),
  clear: $("clear"),
  result: $("result"),
  digit: $("digit"),
  verdictText: $("verdict-text"),
  verdictDetail: $("verdict-detail"),
  verdictGuess: $("verdict-guess"),
  bars: $("bars"),
  seen: $("seen"),
  seenImage: $("seen-image"),
  saliency: $("saliency"),
  explainToggle: $("explain-toggle"),
  saliencyLegend: $("saliency-legend"),
  legendFor: $("legend-for"),
  legendAgainst: $("legend-against"),
  status: $("status"),
  modelInfo: $("model-info"),
  modelVersion: $("model-version"),
  modelAccuracy: $("model-accuracy"),
  modelReport: $("model-report"),
  modelReportLink: $("model-report-link"),
  modelNotice: $("model-notice"),
  feedback: $("feedback"),
  feedbackPrompt: $("feedback-prompt"),
  feedbackButtons: [...document.querySelectorAll("#feedback-digits [data-digit]")],
  feedbackStatus: $("feedback-status"),
  feedbackCount: $("feedback-count"),
  trainCard: $("train"),
  trainForm: $("train-form"),
  trainArchitecture: $("train-architecture"),
  trainEpochs: $("train-epochs"),
  trainFeedback: $("train-feedback"),
  adminField: $("admin-field"),
  adminToken: $("admin-token"),
  trainStart: $("train-start"),
  trainMessage: $("train-message"),
  job: $("job"),
  jobId: $("job-id"),
  jobStatus: $("job-status"),
  jobProgress: $("job-progress"),
  jobProgressFill: $("job-progress-fill"),
  jobPercent: $("job-percent"),
  jobEpoch: $("job-epoch"),
  jobEta: $("job-eta"),
  jobSpeed: $("job-speed"),
  jobOutcome: $("job-outcome"),
  trainCancel: $("train-cancel"),
  trainResume: $("train-resume"),
  chart: $("train-chart"),
};

// All mutable page state lives here.
export const state = {
  strokes: [],       // [[[x, y], ...], ...] in CSS pixels of the pad, as sent to /predict
  drawing: null,     // {pointerId, stroke} while a pen, finger or mouse button is down
  size: 0,           // the pad's CSS width (= height)
  epoch: 0,          // bumped on undo and clear; answers sent in an older epoch are dropped
  inFlight: false,   // one /predict at a time
  wanted: false,     // the strokes changed since the last /predict was sent
  lastSentAt: -Infinity,
  timer: 0,
  prediction: null,  // the /predict answer on display
  explain: false,    // "Show what mattered": the saliency map is drawn over the model's input
  model: null,       // the GET /model answer
  checkingModel: false,
  modelNoticeTimer: 0,
  revision: 0,       // bumped on every change to the drawing (new stroke, undo, clear)
  feedback: { sending: false, sentRevision: -1, label: null },
  job: null,         // {id, view, source, ended, retry} of the training job the panel follows
  starting: false,   // a POST /train is in flight
};
