// gpuhub project download filter: the njs half (nginx's JavaScript module, njs 0.7.9 on Debian bookworm).
// The design, the rules and their limits are in gpuhub/host/project_proxy.py's docstring; this file only
// implements them. Every function runs per request in its own VM (njs keeps no state between requests),
// so the routes file is read once per request (a few KB of JSON; the cost is measured in the tests).
import fs from 'fs';

const AIRLOCK = 'downloads leave a project only through the export airlock';
const PATH_RULES = [  // [rule id, the part of the path after the server's prefix]
    ['files-download', /^files(\/|$)/i],
    ['nbconvert-download', /^nbconvert(\/|$)/i],
    ['view-download', /^view(\/|$)/i],
];
const CONTENTS = /^api\/contents(\/|$)/i;
const DOT_SEGMENT = /(^|\/)\.\.?(\/|$)/;
const CUT_MARK = 'gpuhub: 403 Forbidden (rule ';
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade',
                    'proxy-connection', 'te', 'trailer'];

function loadRoutes(r) {
    try {
        return JSON.parse(fs.readFileSync(r.variables.gpuhub_routes_path)).routes || {};
    } catch (e) {
        r.error('gpuhub: routes file ' + r.variables.gpuhub_routes_path + ' unreadable: ' + e);
        return {};
    }
}

function decode(s) {
    try { return decodeURIComponent(s); } catch (e) { return s; }
}

// js_set $gpuhub_target: the upstream "http://IP:PORT" of the longest route prefix that the (decoded,
// normalised) path starts with, or "" (the server block answers 404). Fills the route's js_var's.
function target(r) {
    const routes = loadRoutes(r);
    const uri = r.variables.uri;
    let best = null, bestLen = -1;
    for (const prefix in routes) {
        const p = decode(prefix);
        if ((uri.startsWith(p) || uri + '/' === p) && p.length > bestLen) {
            best = prefix;
            bestLen = p.length;
        }
    }
    if (best === null) {
        return '';
    }
    const route = routes[best];
    r.variables.gpuhub_prefix = best;
    r.variables.gpuhub_user = route.user || '';
    r.variables.gpuhub_project = route.project || '';
    r.variables.gpuhub_limit = String(route.max_response_bytes || 0);
    r.variables.gpuhub_rest = uri.slice(bestLen);
    return route.target || '';
}

function queryHasBase64(args) {
    // format=base64 anywhere in the query, however it is spelled (repeated, percent-encoded, any case)
    return (args || '').split('&').some(function(kv) {
        const i = kv.indexOf('=');
        return i > 0 && decode(kv.slice(0, i)).toLowerCase() === 'format'
            && decode(kv.slice(i + 1).replace(/\+/g, ' ')).trim().toLowerCase() === 'base64';
    });
}

function block(r, rule, size) {
    r.variables.gpuhub_blocked = rule;
    if (size !== undefined && size !== null) {
        r.variables.gpuhub_size = String(size);
    }
}

// js_set $gpuhub_request_rule: the rule a request breaks before it reaches the server, or "".
function requestRule(r) {
    if (!r.variables.gpuhub_target) {
        return '';
    }
    const rest = r.variables.gpuhub_rest;
    for (let i = 0; i < PATH_RULES.length; i++) {
        if (PATH_RULES[i][1].test(rest)) {
            block(r, PATH_RULES[i][0]);
            return PATH_RULES[i][0];
        }
    }
    // nginx checks the normalised path but sends the server the path as the client wrote it; a dot segment
    // ("files/x/../../api/contents/y") could make the two disagree, and no Jupyter client sends one
    if (DOT_SEGMENT.test(decode(r.variables.request_uri.split('?')[0]))) {
        block(r, 'dot-segments');
        return 'dot-segments';
    }
    if (CONTENTS.test(rest) && (r.method === 'GET' || r.method === 'HEAD') && queryHasBase64(r.variables.args)) {
        block(r, 'contents-base64');
        return 'contents-base64';
    }
    return '';
}

// js_set $gpuhub_contents_read: "1" for a contents API read, which js_content contentsRead() answers.
function contentsRead(r) {
    return r.variables.gpuhub_target && (r.method === 'GET' || r.method === 'HEAD')
        && CONTENTS.test(r.variables.gpuhub_rest) ? '1' : '';
}

function message(rule, size, limit) {
    if (rule === 'response-too-large') {
        return CUT_MARK + 'response-too-large): this response is ' + size + ' bytes, over the '
            + 'project limit of ' + limit + ' bytes (projects.KEY.max_response_mb); ' + AIRLOCK + '.\n';
    }
    if (rule === 'encoded-response') {
        return CUT_MARK + 'encoded-response): the server sent a compressed response, which '
            + 'the size limit cannot measure; ' + AIRLOCK + '.\n';
    }
    return CUT_MARK + rule + '): ' + AIRLOCK + '.\n';
}

// js_set $gpuhub_message: the body of a request-rule 403.
function requestMessage(r) {
    return message(r.variables.gpuhub_blocked || 'blocked');
}

// the route's limit, never more than what a contents read may hold in memory (the cap)
function limitOf(r) {
    const limit = Number(r.variables.gpuhub_limit) || 0;
    const cap = Number(r.variables.gpuhub_cap) || 0;
    return cap > 0 && (limit <= 0 || limit > cap) ? cap : limit;
}

// js_content for contents API reads: the whole reply is fetched through an internal subrequest, so a binary
// read (format base64, asked for or not) or one over the limit is refused with a real 403 before any byte or
// header of it reaches the client. The subrequest goes through the filter's second server (a unix socket),
// whose header and body filters cut a reply at the limit, so it always fits subrequest_output_buffer_size
// (njs 0.7.9 never answers a subrequest whose reply overflows that buffer: the request would hang).
async function contentsReadHandler(r) {
    r.variables.gpuhub_upstream_uri = r.variables.request_uri;
    const reply = await r.subrequest('/_gpuhub_contents', {method: r.method});
    const body = reply.responseBuffer || Buffer.from('');
    const limit = limitOf(r);
    const cutRule = reply.headersOut['X-Gpuhub-Blocked'];
    if (cutRule) {
        return refuse(r, cutRule, reply.headersOut['X-Gpuhub-Size'] || body.length, limit);
    }
    const tail = body.slice(Math.max(0, body.length - 600)).toString();
    if (!reply.headersOut['Content-Length'] && tail.indexOf(CUT_MARK) >= 0) {  // cut mid-stream
        return refuse(r, 'response-too-large', '>' + limit, limit);
    }
    if (limit > 0 && body.length > limit) {
        return refuse(r, 'response-too-large', body.length, limit);
    }
    if (reply.status === 200 && r.method === 'GET' && isBase64Model(reply, body)) {
        return refuse(r, 'contents-base64', body.length, limit);
    }
    for (const h in reply.headersOut) {
        if (HOP_BY_HOP.indexOf(h.toLowerCase()) < 0) {
            r.headersOut[h] = reply.headersOut[h];
        }
    }
    r.return(reply.status, body);
}

function isBase64Model(reply, body) {
    if (String(reply.headersOut['Content-Type'] || '').indexOf('json') < 0) {
        return false;
    }
    let model;
    try {
        model = JSON.parse(body.toString());
    } catch (e) {
        return true;  // a contents reply that is not the JSON the API sends: not passed on unread
    }
    return model !== null && typeof model === 'object' && String(model.format).toLowerCase() === 'base64';
}

function refuse(r, rule, size, limit) {
    block(r, rule, size);
    r.headersOut['Content-Type'] = 'text/plain; charset=utf-8';
    r.return(403, message(rule, size, limit));
}

// js_header_filter on every other proxied response: a declared length over the limit, or a compressed
// body, is cut here. njs 0.7.9 cannot change the status of a proxied response (nginx sends the upstream's
// status line whatever r.status says), so these responses keep the upstream's status line, lose their
// body, and carry X-Gpuhub-Blocked: RULE; the body filter sends the refusal text instead.
function headerFilter(r) {
    const limit = limitOf(r);
    const declared = Number(r.headersOut['Content-Length']);
    const enc = r.headersOut['Content-Encoding'];
    let rule = '';
    if (limit > 0 && declared > limit) {
        rule = 'response-too-large';
        block(r, rule, declared);
    } else if (enc && enc !== 'identity') {
        rule = 'encoded-response';
        block(r, rule, declared || null);
    }
    if (rule) {
        delete r.headersOut['Content-Length'];
        delete r.headersOut['Content-Encoding'];
        delete r.headersOut['ETag'];
        delete r.headersOut['Last-Modified'];
        r.headersOut['Content-Type'] = 'text/plain; charset=utf-8';
        r.headersOut['Cache-Control'] = 'no-store';
        r.headersOut['X-Gpuhub-Blocked'] = rule;
        r.headersOut['X-Gpuhub-Size'] = String(declared || '');
    }
}

// js_body_filter: counts the bytes of a response that declared no length and cuts it when it passes the
// limit (the bytes before the cut have already left; the cut is logged with the count).
function bodyFilter(r, data, flags) {
    const limit = limitOf(r);
    if (r.variables.gpuhub_blocked) {
        if (!r.variables.gpuhub_cut) {
            r.variables.gpuhub_cut = '1';
            const rule = r.variables.gpuhub_blocked;
            const size = r.variables.gpuhub_size || r.variables.gpuhub_count || '?';
            r.sendBuffer((r.variables.gpuhub_count ? '\n' : '') + message(rule, size, limit), {last: true});
        }
        return;
    }
    const count = Number(r.variables.gpuhub_count || 0) + data.length;
    r.variables.gpuhub_count = String(count);
    if (limit > 0 && count > limit) {
        block(r, 'response-too-large', count);
        return bodyFilter(r, data, flags);
    }
    r.sendBuffer(data, flags);
}

export default {target, requestRule, requestMessage, contentsRead, contentsReadHandler, headerFilter, bodyFilter};
