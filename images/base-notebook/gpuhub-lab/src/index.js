// gpuhub-lab: the hub's idle-GPU warning as a JupyterLab notification.
//
// The hub's idle service (gpuhub/hub/idle_service.py) POSTs a notice to this server's
// `{base_url}gpuhub/notice` when the server's GPUs have been idle long enough to be warned, and
// DELETEs it when they are busy again or the server is stopped. This plugin reads it on load and
// every POLL_MS, shows it as a sticky warning (GPUs, idle time, stop time) and dismisses it once
// the notice is gone. Plain JavaScript, no imports: the notification is JupyterLab's own
// (commands apputils:notify / update / dismiss), the request uses the page's server settings.
// The airlock's "Request export…" entry is the second plugin of this extension (./airlock.js).

import airlock from './airlock';

const POLL_MS = 20000;
const MAX_ID = 16; // longer GPU ids (real UUIDs are 40 characters) are cut so the toast shows it all

function describe(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min`;
  }
  const m = Math.floor(s / 60);
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

function shortId(uuid) {
  return uuid.length > MAX_ID ? `${uuid.slice(0, 12)}…` : uuid;
}

// The text the user reads; `now` and the notice's times are Unix seconds.
function noticeText(notice, now) {
  const gpus = notice.gpus.map(shortId).join(', ');
  const label = notice.gpus.length === 1 ? 'GPU' : 'GPUs';
  const stop = new Date(notice.cull_at * 1000).toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit'
  });
  return (
    `${label} ${gpus} idle for ${describe(now - notice.idle_since)}: ` +
    `this server stops at ${stop} (in ${describe(notice.cull_at - now)}) ` +
    'unless a GPU or a kernel is busy again.'
  );
}

// Shown when the server stopped answering after its stop time: the hub has stopped it.
function stoppedText(notice) {
  const gpus = notice.gpus.map(shortId).join(', ');
  return (
    `This server was stopped: ${notice.gpus.length === 1 ? 'GPU' : 'GPUs'} ${gpus} ` +
    'idle. Your home folder is kept; start it again from the hub home page.'
  );
}

const plugin = {
  id: 'gpuhub-lab:idle-notice',
  description: "Shows the hub's idle-GPU warning before the server is stopped.",
  autoStart: true,
  activate: app => {
    const settings = app.serviceManager.serverSettings;
    const url = `${settings.baseUrl.replace(/\/?$/, '/')}gpuhub/notice`;
    const headers = settings.token ? { Authorization: `token ${settings.token}` } : {};
    let shown = null; // {id, text, notice} of the notification on screen
    const update = async text => {
      await app.commands.execute('apputils:update-notification', {
        id: shown.id,
        message: text,
        type: 'warning',
        autoClose: false
      });
      shown.text = text;
    };
    const show = async notice => {
      if (!notice) {
        if (shown) {
          await app.commands.execute('apputils:dismiss-notification', { id: shown.id });
          shown = null;
        }
        return;
      }
      const text = noticeText(notice, Date.now() / 1000);
      if (!shown) {
        const id = await app.commands.execute('apputils:notify', {
          message: text,
          type: 'warning',
          options: { autoClose: false }
        });
        shown = { id, text, notice };
      } else {
        shown.notice = notice;
        if (shown.text !== text) {
          await update(text);
        }
      }
    };
    // No answer (the server going away, or an image without gpuhub-lab): keep what is on screen,
    // and say the server was stopped once its stop time has passed.
    const unreadable = async () => {
      if (shown && Date.now() / 1000 >= shown.notice.cull_at - 5) {
        const text = stoppedText(shown.notice);
        if (shown.text !== text) {
          await update(text);
        }
      }
    };
    const poll = async () => {
      try {
        const resp = await fetch(url, {
          headers,
          credentials: 'same-origin',
          cache: 'no-store',
          redirect: 'manual' // a stopped server's URL redirects to the hub
        });
        if (resp.ok) {
          await show((await resp.json()).notice);
          return;
        }
      } catch (err) {
        console.debug('gpuhub-lab: notice unreadable', err);
      }
      await unreadable();
    };
    void app.restored.then(poll);
    window.setInterval(poll, POLL_MS);
  }
};

export default [plugin, airlock];
