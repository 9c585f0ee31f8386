"""The built-in provider simulator: a local server that answers like the Vonage SMS API, the Vonage
Messages API and Twilio, and calls back with each one's receipts, for tests, demos and benchmarks.

    POST /sms/json                                  Vonage SMS API (`sms_api`)
    POST /v1/messages                               Vonage Messages API (`messages_api`)
    POST /2010-04-01/Accounts/{sid}/Messages.json   Twilio (`twilio_api`)

Each API answers in its own shapes (see its module). On top of that the simulator adds latency, a
throttle (a token bucket or another limiter shape), a concurrency cap and random faults, the same
for all three APIs, all set by `SimulatorConfig` (`config`); the server is `provider`.

A request goes through these checks in order; the first that refuses it answers:

    0. random reset      `reset_before_rate`: the connection drops before the request is read
    1. concurrency cap   HTTP 429 (refused at the door, no latency): SMS API Retry-After: 1;
                         Messages API Retry-After: 1; Twilio code 20429
    2. credentials       SMS API status "2" Missing api_key / api_secret, "4" Bad Credentials;
                         Messages API 401; Twilio 401 code 20003
    3. throttle          SMS API status "1" Throughput Rate Exceeded - please wait [ N ] and retry
                         (N: ms); Messages API 429 with Retry-After (whole s); Twilio 429 code 20429
                         (no wait); spelled otherwise by `throttle_hint`, see below
    4. parameters        SMS API status "2" Missing from/to/text param, "3" Invalid to address,
                         Invalid type param, Invalid callback param; Messages API 422; Twilio 400
    5. magic recipients  see the table below
    6. random HTTP 503   `error_5xx_rate`: not accepted, Retry-After: 1, safe to retry
    7. accept            counted and charged; a random or magic reset or timeout may follow

With `echo_credentials` every send is refused at step 2 as bad credentials, in its API's shape,
with the credentials it carried (the Authorization header, decoded, and the form and query) quoted
in the error text: a client must keep them out of everything it stores or shows.

The throttle has one limiter per API and credential (API key, application id, account SID): the
token bucket of `rate_per_s` and `burst`, or the shape `limiter` names (`sms_blaster.simulator.
limiters`: bucket, sliding log, fixed window, cap in service, queue, or a schedule of these). The
Vonage APIs count requests; Twilio counts segments: a Twilio send costs as many units as its Body
has SMS segments (`sms_blaster.encoding`: GSM-7, else UCS-2), and a send bigger than the whole
bucket goes when the bucket is full. A request the throttle accepted holds its place in a
`concurrency` cap until its answer goes out (or it is dropped or left hanging); a `queue` adds the
request's wait in the queue to its latency. A `concurrency` refusal goes out at once, without the
latency, as a provider refusing at the door does; the other refusals wait out the latency.

`throttle_hint` spells the throttle's refusals: `exact` as in step 3, with the true wait (a
`concurrency` refusal, which knows none, hints the latency); `none` the same answers without a wait
(SMS API "please wait and retry", Messages API 429 without Retry-After); `wrong` a wait drawn at
random between 0 and 2 s whatever the truth; `retry-after` HTTP 429 with Retry-After in whole
seconds (at least 1) from every API, the SMS API included. Twilio's 429 carries a wait only with
`retry-after`. Magic number 9994 keeps its own answer.

Magic recipients, chosen by the last four digits of `to`; client tests rely on these:

    | ends | Vonage SMS API             | Messages API            | Twilio                 | when  |
    |------|----------------------------|-------------------------|------------------------|-------|
    | 9990 | "7" Number barred.         | 422 #1240 Illegal Number| 400 21610 unsubscribed | every |
    | 9991 | "6" Invalid Message        | 422 #1150 Invalid params| 400 21211 invalid To   | every |
    | 9992 | "4" Bad Credentials        | 401                     | 401 20003 Authenticate | every |
    | 9993 | "9" Quota Exceeded         | 402 Low balance         | 401 20003 (account)    | every |
    | 9994 | "1" Throughput … [ 50 ]    | 429, Retry-After: 1     | 429 20429              | first |
    | 9995 | HTTP 503, Retry-After: 1   | 503, Retry-After: 1     | 503 20503, Retry-After | first |
    | 9996 | accepted and counted, then never answered (all three)                       | every |
    | 9997 | accepted and counted, then the connection drops, no answer (all three)      | every |
    | 9998 | "5" Server Error           | 500                     | 500 20500              | first |
    | 9989 | accepted; its receipts say failed: err-code 3 / rejected 1330 / 30003       | every |
    | 9988 | sent with a ttl: accepted; its receipts say expired (see below)              | every |

Twilio has no quota answer in the reference, so 9993 is the account-wide refusal it does document,
20003, which a client treats as fatal like Vonage's status 9 and 402. Status "5" of the SMS API is
a refusal: the message was not taken. A Messages API or Twilio 500 says no such thing: to a client
it is ambiguous (it may have been taken), though the simulator did not accept it.

"First request" numbers are accepted from their second request to that API on;
`POST /_simulator/reset` makes them fail once more. `GET /_simulator/stats` returns the counters
(see `RunningSimulator.stats`). `GET /_simulator/timeline` returns every request's outcome by
when it arrived, all APIs together: `{"arrivals": [[t_ms, accepted, throttled, other], ...]}`,
one row per millisecond with arrivals, t_ms from the first arrival since the last reset;
`throttled` counts the throttle's refusals, `other` every other request not accepted.
`POST /_simulator/config` with a JSON object changes faults, latency, throttle and expected
credentials of the running simulator (`CONFIGURABLE`), so a test can revoke credentials or add
a latency spike mid-run and undo it; it answers 400 to anything else and the changed settings
otherwise. `POST /_simulator/inbound` makes a handset write to a receiver: the provider's inbound
webhook, signed as it signs (see `sms_blaster.simulator.inbound`).

A send may carry a validity period in its API's own field (SMS API `ttl` in ms, 20000 to 604800000;
Messages API `ttl` in s, 20 to 604800; Twilio `ValidityPeriod` in s, 1 to 36000); one outside the
bounds is refused at step 4 (SMS API status "3" Invalid ttl param, the deprecated status 16 being
no longer used; Messages API 422 #1130 Invalid TTL; Twilio 400 code 21624), and the stats keep it
as each message's `ttl_s`. A message sent with one expires when its delivery, a delay drawn like
its receipts' (0 to 2 x `callback_delay_ms`), would take longer than its ttl: its receipts say so
(SMS API `expired` on every part, err-code 2; Messages API `rejected` with error 1360 "TTL
activated / expired"; Twilio `failed`, never `sent`, with ErrorCode 30036 "Validity Period
Expired").

Every accepted message whose receipts have somewhere to go is decided delivered, failed or expired
and its receipts are sent, in its API's shape (see `sms_blaster.simulator.callbacks`): to the send's
own URL (SMS API `callback`, Messages API `webhook_url`, Twilio `StatusCallback`), else, for the two
Vonage APIs, to `callback_url`. Twilio calls back only when the send named a StatusCallback.
"""

from sms_blaster.simulator.answers import Api
from sms_blaster.simulator.callbacks import CallbackFormat
from sms_blaster.simulator.config import SimulatorConfig, ThrottleHint
from sms_blaster.simulator.messages_api import MESSAGES_PATH
from sms_blaster.simulator.provider import (
    CONFIG_PATH,
    RESET_PATH,
    STATS_PATH,
    TIMELINE_PATH,
    RunningSimulator,
    create_app,
    serve,
    start_simulator,
)
from sms_blaster.simulator.sms_api import SMS_PATH
from sms_blaster.simulator.twilio_api import TWILIO_PATH

__all__ = [
    "CONFIG_PATH",
    "MESSAGES_PATH",
    "RESET_PATH",
    "SMS_PATH",
    "STATS_PATH",
    "TIMELINE_PATH",
    "TWILIO_PATH",
    "Api",
    "CallbackFormat",
    "RunningSimulator",
    "SimulatorConfig",
    "ThrottleHint",
    "create_app",
    "serve",
    "start_simulator",
]
