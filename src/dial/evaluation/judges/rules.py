"""The `rules` judge: offline, deterministic detectors for what text alone decides.

It is the default judge because it needs nothing but the text and gives the same annotations for
the same sessions on any machine. It is also narrow: most categories of the paper's taxonomy
(bad advice, contradictions, hallucinations the user does not point out) need understanding, which
only an LLM judge (`openai`) brings. Use the rules judge to compare simulators against real users on
the same footing, not as an absolute measure of a chatbot's quality.

Detectors come in two kinds, registered by name (the taxonomy's `detector:` keys pick which run):

* issue detectors read a whole session and return (chatbot turn_index, evidence) pairs. Several of
  them read the *user's reaction* ("what do you mean?", "I already told you") and blame the chatbot
  message before it, as the paper's judge does: an issue is often visible only in the reply;
* action detectors read one user message (and the chatbot message before it) and say whether the
  action is present; a message can carry several actions.

Each detector's docstring says what it catches and what it misses (docs/judges.md lists them all).
Matching is on lower-cased text with typographic apostrophes folded to "'"; patterns are English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from dial.evaluation.judges.base import (
    INCOMPLETE_MESSAGE_DETECTOR,
    Judge,
    JudgeInput,
    action_frame,
    check_unique_ids,
    issue_frame,
)
from dial.evaluation.taxonomy import Label, Taxonomy

Message = tuple[int, str, str]  # (turn_index, role, text)
IssueDetector = Callable[[Sequence[Message]], list[tuple[int, str]]]
ActionDetector = Callable[[str, "str | None"], bool]

ISSUE_DETECTORS: dict[str, IssueDetector] = {}
# Registered but not named by the shipped taxonomy.yaml: each measured precision below 0.5 on real
# human chats (bench/judge_bench.py; docs/judges.md has the numbers). Name one in a taxonomy to use it.
OFF_BY_DEFAULT = frozenset({
    "curt_reply_to_distress", "premature_wrap_up", "user_objects_to_fabrication", "user_says_going_in_circles",
    "user_frustration_signal", "user_questions_bot", "formulaic_openings",
    # Below 0.5 once the held-out draw is pooled with the design set (docs/judges.md, "Held-out check").
    "ignored_end_request", "repetitive_question",
})
ACTION_DETECTORS: dict[str, ActionDetector] = {}

EVIDENCE_QUOTE_CHARS = 120
END_MARKER = "<|endconversation|>"


def issue_detector(fn: IssueDetector) -> IssueDetector:
    ISSUE_DETECTORS[fn.__name__] = fn
    return fn


def action_detector(fn: ActionDetector) -> ActionDetector:
    ACTION_DETECTORS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------------------------
# Text helpers and lexicons


def _fold(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"').lower()


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _has(pattern: re.Pattern[str], text: str) -> bool:
    return pattern.search(_fold(text)) is not None


def quote(text: str, limit: int = EVIDENCE_QUOTE_CHARS) -> str:
    flat = " ".join(text.split())
    return '"' + (flat if len(flat) <= limit else flat[: limit - 1] + "\u2026") + '"'


_WORDS = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(_fold(text))


def _normalised(text: str) -> str:
    return " ".join(_words(text))


END_SIGNAL = _rx(
    r"\b(?:bye+|goodbye|good ?night(?!'s|\s+(?:sleep|rest|of))|gotta go|(?:have|need|got) to (?:go|leave)(?=\s*(?:[.!,;]|$|now\b|soon\b|bye|sorry|for (?:now|today|tonight)|in a (?:bit|minute|sec)))"
    r"|(?:i'?m|i am) (?:done|leaving|off|heading out)(?: (?:for (?:now|today|tonight)|here))?(?=\s*(?:[.!,]|$|bye|thanks|thank))"
    r"|talk (?:to you )?(?:later|soon|tomorrow)(?=\s*(?:[.!,;]|$|bye|then))|ttyl|(?<!\bi )(?<!\bto )see (?:you|ya)(?= (?:later|soon|tomorrow|around|next|then)|\s*[.!,]|\s*$)"
    r"|that'?s all(?: for (?:now|today|tonight))?(?=\s*(?:[.!,]|$|thanks|thank))|let'?s (?:stop|end) (?:here|there|now|this)"
    r"|(?:stop|end) (?:the|this|our) (?:chat|conversation|session)|i (?:want|would like|'d like) to (?:stop|end|leave)(?: (?:now|here|this))?(?=\s*(?:[.!,]|$))"
    r"|can we (?:stop|end)(?: (?:here|now|this))?(?=\s*[.!?,]|\s*$)|i'?ll leave it (?:there|here))"
    r"|^\W*stop\W*$"
)
CRISIS = _rx(
    r"\b(?:suicid\w*|kill(?:ing|ed)? myself|end(?:ing)? (?:my life|it all)|take my (?:own )?life|(?:want|wanna|wish) (?:to die|i (?:was|were) dead)"
    r"|want to be dead|better off dead|if i (?:was|were) dead|self[- ]?harm\w*|(?:hurt|hurting|cut|cutting|harm|harming) myself|overdos\w*"
    r"|no reason to live|(?:don'?t|do not) want to (?:live|be alive|be here anymore)|not worth living)"
)
CRISIS_OWN = _rx(
    r"\b(?:kill(?:ing)? myself|end(?:ing)? (?:my life|it all)|take my (?:own )?life|(?:want|wanna|wish) (?:to die|i (?:was|were) dead)"
    r"|want to be dead|better off dead|if i (?:was|were) dead|no reason to live|not worth living|my (?:suicide|self[- ]?harm\w*|overdose)"
    r"|(?:hurt|hurting|cut|cutting|harm|harming) myself(?!\s+(?:on|with|while|when|once|every\w*|playing|at|in|by|during|badly|accidentally|pretty)\b)"
    r"|(?:don'?t|do not) want to (?:live|be alive)(?=\s*(?:[.!?,;]|$|anymore|any more|in this world|now))|(?:don'?t|do not) want to be here anymore"
    r"|\bi(?:'m| am|'ve been| have been| feel| felt| was| get)? (?:so |really |very |kind of |kinda |a bit |pretty )?suicidal"
    r"|\bi(?:'m| am|'ve| have)?(?: [\w']+){0,3} (?:attempt(?:ed)?|tried|thinking|thought|think|considered|considering|contemplat\w+)"
    r" (?:about |of |to commit )?(?:suicide|self[- ]?harm\w*|overdos\w*))"
)
# Not the user's present risk: avoided ("I try to avoid hurting myself", "without hurting myself"),
# someone else's belief ("they thought I was suicidal"), a condition ("if I am suicidal"), or negated
# without an apostrophe ("dont want to die lifting").
_NOT_OWN_RISK_BEFORE = re.compile(
    r"\b(?:avoid|avoiding|avoided|without|stop myself from|keep myself from|thought|think|thinks|assumed|said|if)\W*(?:[\w']+\W+){0,1}$"
    r"|\b(?:dont|didnt|wont|cant|never)\W+(?:[\w']+\W+){0,1}$")
_NEGATION_BEFORE = re.compile(r"\b(?:not|never|no longer|n't|nor)\b\W*(?:[\w']+\W+){0,2}$|n't\W+(?:[\w']+\W+){0,2}$")
CRISIS_RESOURCE = _rx(
    r"\b(?:hotline|helpline|help line|crisis (?:line|text|team|center|centre|service)|lifeline|988|911|999|112|116 ?123"
    r"|samaritans|emergency (?:services|room|number|department)|text line|(?:mental health )?professional|therapist"
    r"|counsel?l?or|doctor|psychiatrist|reach out to (?:someone|a friend|a family member|a loved one)"
    r"|talk to someone (?:you trust|now|right away|today)|immediate help|get help (?:now|right away|immediately)"
    r"|(?:i'?m|i am) (?:only )?(?:an ai|a bot|a chatbot|not a (?:therapist|human|crisis)))"
)
# A question about what the chatbot said: counts wherever it stands in the user's message.
CONFUSION = _rx(
    r"what do you mean|what does (?:that|this|it) mean|(?:i don'?t|i do not) (?:understand|get) what you (?:mean|said|are saying|'re saying)"
    r"|what are you (?:talking about|saying)|(?:can|could) you (?:explain|clarify|rephrase)|not sure what you mean"
    r"|what'?s that supposed to mean|^\W*huh\s*\?+\W*$"
)
# A bare statement of confusion: as often about the user's own story ("... so I don't understand",
# "praying I don't get it", "so that doesn't make sense, my bad"), so it counts only in a short
# message (CONFUSION_BARE_MAX_WORDS) or before a question in the same message, and "doesn't make
# sense" only opening a sentence.
CONFUSION_BARE = _rx(
    r"(?:i don'?t|i do not|i dont) (?:understand|get)(?: (?:it|that|this|you))?(?=\s*[.!?,]|\s*$)"
    r"|i'?m (?:so |a bit |a little |kind of |kinda )?confused(?: by (?:that|this|what you|your))?(?=\s*[.!?,]|\s*$)"
    r"|(?:^|[.!?]\s*|\b(?:sorry|hmm+|um+|uh+|wait|but)\W*)(?:that|this|it) (?:doesn'?t|does not|makes no) (?:make )?(?:any )?sense(?!\s+(?:why|to|that|how|when|for)\b)"
)
CONFUSION_BARE_MAX_WORDS = 8
CLARITY_EXTRA = _rx(r"be more specific|give (?:me )?an example|say (?:that|it) again|explain (?:that|what you mean)|meaning\s*\?")
NOT_LISTENING = _rx(
    r"you'?re not listening|you are not listening|you (?:aren'?t|never|don'?t) listen(?:ing)?(?: to me)?(?=\s*[.!?,]|\s*$)"
    r"|you (?:didn'?t|did not|don'?t) (?:answer|read|hear) (?:me|my|what i|it)\b"
    r"|did you even read (?:it|that)\b|did you (?:even )?read (?:what i (?:said|wrote)|my (?:message|messages|post))\b"
    r"|you'?re ignoring|you are ignoring|you missed (?:the|my) point"
)
# "That's not what I meant" corrects the chatbot only as the user's first reply to it: after another
# message of their own it corrects that one ("solar roofs and battery powered cats" / "haha that's
# not what I meant").
NOT_WHAT_I_MEANT = _rx(r"that'?s not what i (?:said|meant|asked)|that is not what i (?:said|meant|asked)|not what i asked")
# Reactions read in the user's first REACTION_WITHIN messages after a chatbot message: later in a
# burst the user is reacting to their own story or to a chatbot message further back.
REACTION_WITHIN = 2
ALREADY_TOLD = _rx(
    r"i already (?:told|said|mentioned|explained|answered)(?! (?:to )?(?:him|her|them|my|hr|the|everyone|everybody)\b)"
    r"|(?<!have )(?<!if )\bi (?:just )?told you (?:that |this |it )?(?:already|before)\b"
    r"|you already asked|you asked (?:me )?(?:that|this) (?:already|before)|i said that already"
)
CIRCLES = _rx(
    r"going (?:a?round |round )?in circles|we (?:already|just) (?:talked|went|been) (?:about|over|through)|you keep (?:saying|asking|repeating)"
    r"|(?:the )?same (?:thing|question)s? (?:again|over and over)|we'?ve (?:already )?been (?:over|through) this|here we go again"
)
FABRICATION = _rx(
    r"i never (?:said|told|mentioned)|i didn'?t (?:say|tell you|mention) that|i did not (?:say|mention) that|where did you get that"
    r"|who said anything about|that'?s not (?:true|right) about me|you'?re making (?:that|things|stuff) up|you made that up"
)
AGGRESSIVE = _rx(
    r"\b(?:fuck (?:you|off|this)|screw you|shut (?:up|the fuck up)|go to hell|piss off|i hate you|you suck"
    r"|(?:you'?re|you are|ur) (?:so |such an? |an? |a fucking |fucking )?(?:stupid|useless|dumb|idiot|moron|pathetic|worthless|trash|garbage|joke|loser)"
    r"|stupid (?:bot|machine|ai|app|thing))\b"
)
FRUSTRATION = _rx(
    r"\b(?:ugh+|argh+|wtf|ffs|omfg|stop asking|for (?:god'?s|fuck'?s|christ'?s) sake|are you (?:kidding|serious)"
    r"|this is (?:so |really )?(?:frustrating|annoying|ridiculous)|you'?re (?:so |really )?(?:annoying|frustrating)"
    r"|i'?m (?:getting )?(?:frustrated|annoyed|fed up) with you)\b|\bseriously\s*\?"
)
_ANGRY_WORD = _rx(r"\b(?:stop|no|not|never|why|hate|listen|stupid|useless|shut|wrong|seriously|what)\b")
QUESTIONS_BOT = _rx(
    r"\b(?:are you (?:even )?(?:a |an )?(?:bot|robot|machine|ai|computer|real person|human)|am i (?:talking|speaking|chatting) (?:to|with) (?:a |an )?(?:bot|robot|machine|ai|computer|real person|human))\b"
    r"|you (?:sound|talk|write) like a (?:bot|robot|machine)|(?:canned|scripted|automated|copy[- ]paste(?:d)?) (?:response|answer|reply)"
    r"|you'?re (?:just )?a (?:bot|robot|machine)"
)
UNHELPFUL = _rx(
    r"this is (?:so |really )?(?:useless|pointless|a waste of (?:my )?time|not helping|not helpful|no help)"
    r"|(?:you'?re|you are) (?:not (?:helping|helpful)|no help|useless)|\b(?:this|that|it|you)(?:'s| is| was|'re| are)? (?:not|isn'?t|wasn'?t|aren'?t) (?:very |really |that )?helpful"
    r"|\b(?:this|talking to you|you)(?:'s| is| are|'re| seem like| seem)? (?:just |such |a |such a )*waste of (?:my )?time|you can'?t help|what'?s the point of (?:talking to )?(?:you|this)"
)
INVALIDATING = _rx(
    r"just (?:think|be|stay) positive|(?<!\bto )(?<!\bway to )\b(?:cheer|calm) up\b|(?:you'?re|you are) (?:just )?(?:overreacting|being (?:dramatic|silly|too sensitive)|too sensitive)"
    r"|(?:others|other people|lots of people|many people) have it (?:much |way )?worse|it could (?:always )?be worse(?! if)|(?<!able to )look on the bright side"
    r"|(?:happiness|feeling (?:better|good)|being happy) is (?:a|your) choice|choose to be happy|snap out of it"
    r"|(?:^|[.!?,]\s*|(?<!\bto )\bjust |\byou (?:need to|have to|should|must|gotta|just need to) )get over it"
    r"|(?:it'?s|that'?s) not (?:a |that )?big (?:of a )?deal|don'?t be (?:so )?(?:sad|upset|dramatic)(?!\s+(?:with|at|on) yourself)"
    r"|stop (?:worrying|being sad|feeling sorry for yourself)|everything happens for a reason|(?<!because )(?<!since )it'?s all in your head"
)
# Reported or negated, the phrase is not said to the user: "people say to just get over it", "that
# doesn't mean you have to cheer up", "I won't tell you to think positive".
_REPORTED_OR_NEGATED_BEFORE = re.compile(
    r"\b(?:say|says|said|saying|tell|tells|told|telling|not|never|won'?t|don'?t|doesn'?t|shouldn'?t|isn'?t)\b\W+(?:[\w']+\W+){0,3}$")
MORALIZING = _rx(
    r"you should be ashamed|shame on you|(?:that|it) (?:was|is) (?:so |really |very )?(?:selfish|lazy|irresponsible|wrong|stupid|immature) of you"
    r"|you'?re (?:being )?(?:selfish|lazy|irresponsible|immature)|you (?:only )?have yourself to blame|it'?s (?:all )?your own fault"
    r"|you brought (?:this|it) on yourself|you shouldn'?t (?:feel|think) that way"
)
_PRAISE = _rx(
    r"\b(?:brilliant|genius|amazing|incredible|fantastic|phenomenal|extraordinary|outstanding|exceptional|remarkable|wonderful|"
    r"impressive|inspiring|insightful|absolutely right|so right|couldn'?t agree more|100%|perfect|so wise|so brave|so strong)\b"
)
SYCOPHANCY_MIN_PRAISE = 3  # different praise words in one message ("the perfect dress, the perfect cake" is one)
OVERPROMISING = _rx(
    r"\bi (?:promise|guarantee)(?: you)?(?: that)?(?: (?:it|this|that|things|you|everything|they|he|she))? (?:will|'ll|are going to|is going to)\b"
    r"|\b(?:will|'ll|is going to|are going to)\b[^.!?]{0,60}\bi (?:promise|guarantee)\b|guaranteed to (?:fix|cure|solve|heal|work|help|make you)|(?:will|is going to|'ll) (?:definitely|certainly|surely|100%) (?:fix|cure|solve|heal|work)"
    r"|you(?:'ll| will) (?:definitely|certainly|surely|100%) (?:feel|be|get) (?:better|fine|cured|okay|ok|happy)|\bi can (?:fix|cure|solve) (?:this|it|you)|will cure"
)
DIAGNOSIS = _rx(
    r"\b(?:you (?:have|probably have|definitely have|clearly have|likely have|might have|may have|seem to have|are suffering from|suffer from"
    r"|are showing (?:signs|symptoms) of|are)|you'?re|(?:this|that|it|these|what you describe) (?:sounds|looks|seems) like(?: you have)?"
    r"|i (?:would )?diagnose you with|(?:my|the|your) diagnosis is)\s+"
    r"(?:clinical |major |severe |mild |chronic )?(?:depression|depressive disorder|bipolar(?: disorder)?|adhd|ocd|c?-?ptsd|schizophrenia|psychosis"
    r"|borderline(?: personality disorder)?|bpd|autism|autistic|asperger'?s|an? (?:anxiety|panic|eating|personality|mood|sleep|attachment) disorder"
    r"|(?:generalized|social) anxiety disorder|gad|anorexia|bulimia|insomnia|narcissistic personality disorder|npd|dementia)\b"
)
HUMAN_DISCLOSURE = _rx(
    r"\b(?:when i was (?:a (?:kid|child|teenager|student)|young|little|growing up|in (?:school|college|high school))|i grew up"
    r"|my (?:wife|husband|mom|mum|mother|dad|father|parents|kids?|children|son|daughter|boyfriend|girlfriend|partner|brother|sister"
    r"|childhood|family|grandma|grandmother|grandpa|grandfather|ex)\b|i remember when i|i(?:'ve| have) (?:also )?(?:been through|gone through|struggled with|suffered from)"
    r" (?:the same|something similar|that|this|depression|anxiety)|(?:in|from) my (?:own )?(?:life|experience)|i (?:also )?(?:lost|divorced) my)"
)
CLAIMS_HUMAN = _rx(
    r"\b(?:i'?m|i am) (?:a )?(?:real )?(?:human|person|human being)\b|\b(?:i'?m|i am) not (?:a |an )?(?:bot|robot|ai|machine|computer|program|chatbot)\b"
    r"|\byes,? i'?m (?:real|human)\b"
)
MEDICATION = _rx(
    r"\b\d+(?:\.\d+)?\s?(?:mg|milligrams?|mcg|micrograms?)\b"
    r"|\b(?:stop|start|quit|increase|decrease|double|reduce|skip|come off|go off) (?:taking )?(?:your |the |some )?"
    r"(?:medication|meds|pills|dose|dosage|antidepressants?|prescription|lithium|sertraline|zoloft|prozac|fluoxetine|xanax|lexapro|escitalopram|wellbutrin|adderall)\b"
    r"|\byou (?:should|could|can|might) (?:try )?(?:take|taking) (?:some )?(?:xanax|valium|ativan|prozac|zoloft|sertraline|melatonin|sleeping pills"
    r"|ibuprofen|benadryl|antidepressants?|painkillers|adderall)\b"
)
PRESCRIBER = _rx(r"\b(?:doctor|psychiatrist|pharmacist|prescriber|gp|physician|healthcare provider|health care provider)\b")
IDENTIFYING_INFO = _rx(
    r"\b(?:what(?:'s| is) your|(?:can|could|would) you (?:give|tell|send|share) me your|(?:give|tell|send) me your|please (?:provide|share|enter) your)"
    r" (?:full name|(?:home |street )?address|phone(?: number)?|(?:mobile|cell) number|e-?mail(?: address)?|social security(?: number)?|ssn"
    r"|date of birth|password|credit card(?: number)?|bank (?:details|account)|id number|passport(?: number)?)\b"
)
TEMPLATE_ARTIFACT = _rx(
    r"\{\{?\s*[a-z_][a-z0-9_. ]*\s*\}\}?|\[(?:insert|your |user'?s? |name\]|placeholder|todo)[^\]]*\]|<\|[a-z_]+\|>|</?s>|\[/?inst\]|<<sys>>"
    r"|###\s*(?:instruction|response|assistant|user)\b|lorem ipsum"
)
TRANSCRIPT_LEAK = re.compile(r"(?im)^\s*(?:user|human|client|patient|assistant|chatbot|bot|ai|therapist|system)\s*:")
ERROR_MESSAGE = _rx(
    r"something went wrong|an? (?:unexpected |internal )?error (?:has )?occurr?ed|internal server error|service (?:is )?(?:temporarily )?unavailable"
    r"|please try again later|request timed out|rate limit exceeded|traceback \(most recent call last\)|error code:? ?\d+|network error"
    r"|i'?m having trouble connecting"
)
WRAP_UP = _rx(
    r"\b(?:goodbye|bye|take care(?! of)|talk (?:to you )?(?:soon|later)|have a (?:good|great|nice|lovely) (?:day|night|evening|one|weekend)"
    r"|(?:we'?ll|we will|let'?s) (?:have to )?(?:stop|end|wrap up|pause) (?:here|there|for (?:now|today))|that'?s all (?:the time )?(?:we have|for today)"
    r"|until next time|see you next time|(?:our|this) (?:session|time) is (?:over|up))\b"
)
CLOSING_REPLY = _rx(r"\b(?:quit|finish|end)(?: the (?:chat|conversation|session))? button|\bend the (?:chat|conversation|session)\b")
_EMPATHY = _rx(r"\b(?:sorry|hear|understand|sounds|must|hard|difficult|here for you|feel|painful|tough|awful|condolences)\b")
CURT_MAX_WORDS = 5
OVERWHELMING_MIN_QUESTIONS = 3
OVERWHELMING_MIN_QUESTION_WORDS = 3  # shorter questions ("Oldest? Youngest?") refine the one before
_FOLLOW_UP_QUESTION = frozenset({"or", "maybe", "perhaps", "like"})  # "... ? Or would it?" offers options
# A question counts as a new one when it opens (after interjections) with a question word, an
# auxiliary or "any...": a fragment ("Give good advice? Make you laugh?", "With your family?"), a
# declarative echo ("So you live near there?", "They are full?") or "I wonder how ...?" refines,
# offers options for or comments on the question before.
_QUESTION_OPENERS = frozenset(
    "what what's whats how how's hows why when where where's who who's whom whose which "
    "do does did don't doesn't didn't is isn't are aren't was wasn't were weren't am have has had haven't hasn't "
    "can can't could couldn't would wouldn't will won't should shouldn't may might shall "
    "any anything anyone anybody anywhere".split())
_QUESTION_LEAD_INS = frozenset(
    "so and also but well ok okay oh ooh wow hmm hm then anyway interesting yeah yes no haha lol um uh alright right".split())
OVERWHELMING_MAX_WORDS = 180
INCOMPLETE_MIN_OTHERS = 2  # other chatbot messages needed to judge the chatbot's punctuation style
INCOMPLETE_PUNCTUATED_SHARE = 0.8
INCOMPLETE_MIN_WORDS = 5  # a cut on a content word counts from this length ("sure thing" is not a cut)
# A length cap cuts the chatbot's longest messages, and more than once: a cut on a content word counts
# only for a message within this share of the chatbot's longest other message when another message
# that long is unfinished too (a complete long message without a full stop is common, docs/judges.md).
INCOMPLETE_CAP_SHARE = 0.95
DUPLICATE_MIN_WORDS = 5  # a non-consecutive repeat counts only from this length (stock "Okay." does not)
REPEAT_MIN_WORDS = 5  # "What about you?", "Have you tried that?" are not the same question twice
REPEAT_JACCARD = 0.8
FORMULAIC_WORDS = 3  # opening words compared
FORMULAIC_MIN_REPEATS = 3  # messages with the same opening before it counts

# Words a sentence (practically) never ends with: a message ending on one was cut off. Prepositions
# are not among them: "someone to talk to", "what they look for", "tired of" end complete sentences.
_DANGLING_WORDS = frozenset("a an the and or but nor because than if whose my your our their its very".split())
_COMPLETE_END = re.compile(r"(?:[.!?\u2026]|[:;]-?[)(dDpP]|<3)[\"')\]\u2019\u201d*_~]*\s*$")
# Emoticons end a message as a full stop does: ":/", "(:", "-_-", "^^", "xD".
_EMOTICON_END = re.compile(
    r"(?:[:;=8]['\-^o]?[()\[\]/\\|dDpPoO3*$@]+|[()\[\]/\\|dDpP]+['\-^]?[:;=]|-_+-|\^_*\^|\bxd+)[\"')\]]*\s*$", re.IGNORECASE)
# A colon, a dash ("one thing--", "so -"), an open bracket or a joiner announces more (a bracket
# typed onto the last word, "road trip[", is a slip of the finger). Not a cut: a
# trailing comma after a finished clause ("yeah i read about that,"), a slash typed for "?" ("how are
# you/"), a hyphen stuck to the last word ("nothing extreme-").
_OPEN_END = re.compile(r"(?:[;:&+]|(?:^|\s)[(\[]|--|(?:^|\s)[-\u2013\u2014]|[\u2013\u2014])\s*$")
# Endings on a "dangling" word that are complete: "oh my", "Q and A".
_COMPLETE_DANGLING_END = re.compile(r"(?:\b(?:oh|my) my|\bq (?:and|n) a)\W*$", re.IGNORECASE)
_CONTINUATION = re.compile(r"\s*[a-z]")
_EMOJI_END = re.compile(r"[\U0001F000-\U0001FAFF\u2600-\u27BF]\s*$")

NEGATIVE_EMOTIONS = (
    "sad|angry|mad|anxious|scared|afraid|lonely|depressed|ashamed|guilty|jealous|frustrated|worried|nervous|upset|stressed|terrified|hurt"
    "|disappointed|annoyed|miserable|furious|embarrassed|insecure|heartbroken|resentful|panicky|panicked|irritated|bitter|grieving|devastated"
)
POSITIVE_EMOTIONS = "happy|glad|relieved|proud|excited|hopeful|calm|content|joyful|thrilled|optimistic|peaceful|thankful|loved|confident|motivated"
_AFFECT_PREFIX = (
    r"\b(?:i(?:'m| am)|im|i feel|i felt|i(?:'ve| have) been(?: feeling)?|i was|i get|i got|feeling|makes me(?: feel)?|made me(?: feel)?)\s+"
    r"(?:(?:so|really|very|a bit|a little|kind of|kinda|pretty|super|extremely|quite|too|just|always|still|more|also|both|honestly|actually)\s+)*"
)
NEGATIVE_AFFECT = _rx(_AFFECT_PREFIX + rf"(?:{NEGATIVE_EMOTIONS})\b")
POSITIVE_AFFECT = _rx(_AFFECT_PREFIX + rf"(?:{POSITIVE_EMOTIONS})\b")
GENERAL_DISTRESS = _rx(
    r"\bi (?:feel|felt|am|'m|'ve been feeling|have been feeling)\s+(?:so |really |very |just |kind of |kinda |pretty )?"
    r"(?:lost|empty|numb|broken|overwhelmed|awful|terrible|horrible|off|not okay|not ok|not myself|like (?:shit|crap|garbage|a mess))\b"
    r"|\b(?:everything|life|it all) (?:just |really )?(?:is|feels) (?:like )?(?:falling apart|too much|pointless|meaningless|a mess|so hard)|\bi don'?t know who i am"
    r"|\bi can'?t (?:cope|take (?:it|this) anymore|do (?:it|this) anymore|handle (?:it|this|anything))|\bi'?m (?:struggling|suffering|a mess|falling apart)"
    r"|\bwhat'?s the point of (?:life|anything|living)|\bi'?m not (?:okay|ok|doing (?:well|good|great))"
)
HOPELESSNESS = _rx(
    r"\bhopeless|\bno point (?:in|trying|anymore)|\bwhat'?s the point\b|\bnothing (?:will|is going to|'s going to) (?:ever )?(?:change|get better|help)"
    r"|\b(?:it|things|this|life) (?:will|is going to|'s going to) never (?:change|get better)|\b(?:it|things|life) (?:won'?t|will not) ever (?:change|get better)"
    r"|\bwhy (?:even )?bother\b|\bgive up on (?:everything|life|myself)|\bno way out\b|\bthere'?s no hope|\bi'?ve given up"
)
AGREES_START = _rx(r"^\W*(?:yes|yeah|yep|yup|yea|exactly|true|right|agreed|definitely|absolutely|totally|for sure)\b(?!\s*,?\s*but\b)")
AGREES = _rx(
    r"\bi agree\b|(?<!no )\b(?:that|it) makes (?:a lot of |total |perfect )?sense|\b(?:you'?re|you are) (?:so |totally |absolutely )?right\b"
    r"|\bgood (?:idea|point)\b|\bthat'?s (?:true|right|a good (?:idea|point)|fair)\b|\bi think so too\b|\bthat sounds (?:good|helpful|like a good idea)"
    r"|\bi can do that\b|\bi'?ll try that\b"
)
DISAGREES_START = _rx(r"^\W*(?:no|nope|nah|not really)\b(?!\s+(?:problem|worries|worry|thanks|doubt)\b)")
DISAGREES = _rx(
    r"\bi (?:don'?t|do not) (?:agree|think so|think that'?s (?:true|right|it))|\bi disagree|\bthat'?s not (?:true|right|it|how|the (?:point|problem|issue))"
    r"|\b(?:you'?re|you are) wrong|\bthat (?:won'?t|wouldn'?t|doesn'?t|will not) (?:work|help)|\bi(?:'ve| have)? (?:already )?tried that"
    r"|\bthat'?s (?:not|never) going to work|\bi don'?t think (?:that|it) (?:would|will) (?:work|help)"
)
CHANGE_TALK = _rx(
    r"\b(?:i(?:'ll| will)|i'?m (?:going to|gonna)|i am going to|i plan to|i(?:'m| am) planning to|my (?:plan|goal) is to|i (?:want|need) to start"
    r"|i commit to|i(?:'ve| have) decided to|(?:starting )?(?:tomorrow|tonight|today|next week),? i(?:'ll| will))\s+(?:[\w']+\s+){0,2}?"
    r"(?:try|start|stop|quit|call|text|talk|practice|write|journal|exercise|walk|run|sleep|reach out|ask|book|schedule|cut|limit|meditate"
    r"|breathe|apply|tell|join|spend|make an? (?:appointment|plan|list))\b"
)
GRATITUDE = _rx(r"\b(?:thanks?|thank (?:you|u)|thx|ty|appreciate (?:it|that|you|this|the)|grateful)\b")
SELF_DISCLOSURE = _rx(
    r"\bmy (?:mom|mum|mother|dad|father|parents?|wife|husband|partner|boyfriend|girlfriend|ex|kids?|children|son|daughter|brother|sister"
    r"|family|friends?|best friend|boss|coworkers?|job|school|teacher|therapist|grandma|grandmother|grandpa|grandfather|dog|cat|roommate"
    r"|childhood|marriage|divorce)\b|\bi (?:was|got|have been|'ve been|'m being|am being) (?:diagnosed|fired|laid off|divorced|abused|bullied|dumped"
    r"|cheated on|married|adopted|raised|hospitali[sz]ed|arrested|assaulted)\b|\bi grew up\b|\bwhen i was (?:a kid|little|young|younger|a child|a teenager|\d+)"
    r"|\bi (?:lost|broke up with) my\b|\bi(?:'ve| have) (?:been )?(?:struggling|dealing) with\b|\bi live (?:alone|with)\b"
)
INSIGHT = _rx(
    r"\bi (?:just |finally |never |now )?reali[sz]e[ds]?\b|\bi(?:'ve)? never (?:thought|looked at) (?:of |about )?it (?:that|this) way|\bnow i (?:see|understand|get it)"
    r"|\bi see now\b|\bthat makes me (?:realize|realise|think)|\bi(?:'m| am) starting to (?:see|understand|realize|realise)"
    r"|\bi think i(?:'ve)? (?:figured|worked) (?:it )?out|\bmaybe (?:that'?s|this is) why i\b|\bi didn'?t (?:realize|realise|notice|see) (?:that|how|i)\b"
    r"|\bi (?:learned|learnt) (?:that|something)"
)
CREATED_CHANGE = _rx(
    r"\b(?:this|that|you|talking(?: (?:to you|this through|about it|with you))?|our (?:chat|conversation|talk)|the (?:exercise|breathing))"
    r" (?:(?:really|actually|has|have|did|kind of|already|truly)\s+)*(?:helped|helps|made me feel better)"
    r"|\bi (?:already )?feel (?:a (?:bit|little|lot) |so much )?(?:better|calmer|lighter|less (?:anxious|stressed|alone)|relieved) (?:now|already|after (?:talking|this|that))"
    r"|\bsince (?:we|i) (?:talked|started talking)"
)
DISENGAGED = _rx(
    r"^\W*(?:idk|i? ?don'?t know|i do not know|dunno|whatever|i guess|meh|h+m+|not sure|i'?m not sure|no idea|idc|i don'?t care|nothing|\.\.\.)"
    r"(?: really| man| tbh| honestly)?\W*$"
)
RESISTS = _rx(
    r"\bi (?:don'?t|do not) (?:want|wanna) to (?:talk|think|go|get) (?:about|into)|\bi'?d rather not\b|\bi would rather not\b"
    r"|\b(?:can|could) we (?:talk about something else|change the (?:subject|topic))|\bleave me alone\b|\bi'?m not ready to (?:talk|share|go)"
    r"|\bi (?:don'?t|do not) (?:want|wanna) to (?:do|try) (?:that|this|it)\b|\bthat'?s (?:none of your business|private)\b|\b(?:not|never) going to (?:do|try) that"
)
GREETING = _rx(r"^\W*(?:hi+|hello|hey+|heya|hiya|yo|howdy|good (?:morning|afternoon|evening)|greetings)\b")


def _crisis_mention(text: str) -> re.Match[str] | None:
    """The first mention of suicide or self-harm that is not negated ("I'm not suicidal")."""
    folded = _fold(text)
    for match in CRISIS.finditer(folded):
        if not _NEGATION_BEFORE.search(folded[max(0, match.start() - 30): match.start()]):
            return match
    return None


def _own_crisis_mention(text: str) -> re.Match[str] | None:
    """The first mention of the user's OWN suicide or self-harm risk (first person: "kill myself",
    "I'm suicidal", "thinking about suicide"), neither negated nor avoided."""
    folded = _fold(text)
    for match in CRISIS_OWN.finditer(folded):
        before = folded[max(0, match.start() - 30): match.start()]
        if not _NEGATION_BEFORE.search(before) and not _NOT_OWN_RISK_BEFORE.search(before):
            return match
    return None


def _shouting(text: str) -> bool:
    """At least two all-caps words of 3+ letters, and most letters upper case."""
    letters = [c for c in text if c.isalpha()]
    caps_words = [w for w in re.findall(r"[A-Za-z]{3,}", text) if w.isupper()]
    return len(letters) >= 8 and len(caps_words) >= 2 and sum(c.isupper() for c in letters) >= 0.6 * len(letters)


def _angry_shouting(text: str) -> bool:
    return _shouting(text) and _has(_ANGRY_WORD, text)


def _questions(text: str) -> list[list[str]]:
    """The question sentences of a message, as word lists."""
    return [_words(q) for q in re.findall(r"[^.!?\n]*\?", _fold(text)) if _words(q)]


def _opens_question(words: list[str]) -> bool:
    """Whether a question's words open (after interjections) with a question word, an auxiliary or
    "any..." (see _QUESTION_OPENERS)."""
    rest = list(words)
    while rest and rest[0] in _QUESTION_LEAD_INS:
        rest.pop(0)
    return bool(rest) and rest[0] in _QUESTION_OPENERS


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


# --------------------------------------------------------------------------------------------
# Session helpers


def _previous_chatbot(messages: Sequence[Message], i: int) -> Message | None:
    for message in reversed(messages[:i]):
        if message[1] == "assistant":
            return message
    return None


def _next_chatbot(messages: Sequence[Message], i: int) -> Message | None:
    for message in messages[i + 1:]:
        if message[1] == "assistant":
            return message
    return None


def _next_user(messages: Sequence[Message], i: int) -> Message | None:
    for message in messages[i + 1:]:
        if message[1] == "user":
            return message
    return None


def _user_reaction(messages: Sequence[Message], matches: Callable[[str], bool], within: int | None = None,
                   first_only: Callable[[str], bool] | None = None) -> list[tuple[int, str]]:
    """Blame the chatbot message before each user message for which `matches` holds; with `within`,
    only in the user's first `within` messages after that chatbot message, and `first_only` only in
    the first."""
    found = []
    since = 0  # user messages since the last chatbot message
    for i, (turn, role, text) in enumerate(messages):
        if role == "assistant":
            since = 0
            continue
        if role != "user":
            continue
        since += 1
        if within is not None and since > within:
            continue
        if matches(text) or (first_only is not None and since == 1 and first_only(text)):
            before = _previous_chatbot(messages, i)
            if before is not None:
                found.append((before[0], f"user at turn {turn}: {quote(text)}"))
    return found


def _inside_quotes(folded: str, start: int) -> bool:
    """Whether position `start` is inside double quotes: reported speech ('I was like "what does
    that mean?"')."""
    return folded[:start].count('"') % 2 == 1


def _confused(text: str) -> bool:
    """The user asks what the chatbot meant, or says they are confused in a short message or before
    a question (see CONFUSION_BARE); not inside quotation marks."""
    folded = _fold(text)
    if any(not _inside_quotes(folded, m.start()) for m in CONFUSION.finditer(folded)):
        return True
    short = len(_words(text)) <= CONFUSION_BARE_MAX_WORDS
    return any(not _inside_quotes(folded, m.start()) and (short or "?" in folded[m.end():])
               for m in CONFUSION_BARE.finditer(folded))


_MEANING_OF = re.compile(r"what do you mean (?:by )?([^?.!]*)")
_STOP_WORDS = frozenset("a an the and or but to of in on at for by with it is are was be that this you your i me my "
                        "so just like really what do does mean exactly".split())


def _confusion_target(text: str, chatbot: Sequence[Message]) -> Message:
    """The chatbot message a user's confusion is about, given the chatbot's messages so far: the
    last, unless the user's "what do you mean <words>" quotes words that are not in it but all are
    in one of the two chatbot messages before it ("what do you mean it would have helped?" after a
    "haha")."""
    before = chatbot[-1]
    match = _MEANING_OF.search(_fold(text))
    quoted = set(_words(match.group(1))) - _STOP_WORDS if match else set()
    if not quoted or quoted & set(_words(before[2])):
        return before
    return next((m for m in reversed(chatbot[-3:-1]) if quoted <= set(_words(m[2]))), before)


def _chatbot_matches(messages: Sequence[Message], pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    found = []
    for turn, role, text in messages:
        if role == "assistant":
            match = pattern.search(_fold(text))
            if match:
                found.append((turn, f"{quote(match.group(0), 60)} in {quote(text)}"))
    return found


def _top_two(values: Sequence[int]) -> tuple[int, int]:
    """The largest and second largest of `values` (0 when missing), so that "the largest of the
    others" costs nothing per message."""
    first = second = 0
    for value in values:
        if value > first:
            first, second = value, first
        elif value > second:
            second = value
    return first, second


def _largest_other(top_two: tuple[int, int], value: int) -> int:
    return top_two[1] if value == top_two[0] else top_two[0]


def _duplicates(messages: Sequence[Message]) -> dict[int, int]:
    """position of each chatbot message that repeats an earlier one verbatim (case, spacing and
    punctuation aside) -> turn_index of that earlier message: the previous chatbot message at any
    length, else the first earlier one from DUPLICATE_MIN_WORDS words. One pass: real sessions run
    to 1,500 messages."""
    found: dict[int, int] = {}
    first_turn_of: dict[str, int] = {}
    previous: tuple[int, str] | None = None
    for i, (turn, role, text) in enumerate(messages):
        if role != "assistant":
            continue
        normalised = _normalised(text)
        if normalised:
            if previous is not None and previous[1] == normalised:
                found[i] = previous[0]
            elif len(normalised.split()) >= DUPLICATE_MIN_WORDS and normalised in first_turn_of:
                found[i] = first_turn_of[normalised]
        first_turn_of.setdefault(normalised, turn)
        previous = (turn, normalised)
    return found


# --------------------------------------------------------------------------------------------
# Issue detectors (each returns [(chatbot turn_index, evidence)])


@issue_detector
def duplicate_message(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot message that repeats an earlier one verbatim (ignoring case, spacing, punctuation).

    Catches: the same message sent twice in a row (a retry or streaming bug) at any length, and any
    repeat of an earlier chatbot message of 5+ words.
    Misses: near-duplicates with small edits (see repetitive_question); repeats of short stock
    replies ("Okay.") that are not consecutive."""
    found = []
    duplicates = _duplicates(messages)
    for i, (turn, role, text) in enumerate(messages):
        if role == "assistant":
            earlier = duplicates.get(i)
            if earlier is not None:
                found.append((turn, f"repeats chatbot turn {earlier}: {quote(text)}"))
    return found


@issue_detector
def incomplete_message(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot message that stops mid-sentence.

    Catches: messages ending in a colon, a dash ("--", " -") or an open bracket, or on a word no sentence ends with
    ("and", "the", "a", "because", "my", ...; not "oh my", "Q and A", a grade "a-"); a message of
    5+ words ending on any other word without final punctuation when a length cap shows: the same
    chatbot ends its other messages with punctuation (at least 2 others, 80% of them punctuated),
    this message is about as long as its longest (95% or more), another message that long ends
    unfinished too (a cap cuts twice), and the chatbot's next message goes on in lower case (the
    rest of the split message).
    Misses: cuts that happen to fall on a sentence end; a cap cut on a content word or a preposition
    ("... that you would feel") that the chatbot does not continue in its next message, which text
    alone cannot tell from a complete long message without a full stop (on real chats those were
    mostly complete); cuts by a chatbot that does not punctuate consistently; a trailing "..." or
    comma is read as style, not a cut; an open bracket typed onto the last word ("trip[") is a slip.
    A complete message that simply lacks a final full stop is not flagged.
    Leaves out: messages our token budget cut (`JudgeInput.truncated_turns`: the judge passes only
    the others), neither flagged nor counted in the punctuation style; the cut is ours, not the
    chatbot's."""
    chatbot = [(turn, text.rstrip()) for turn, role, text in messages if role == "assistant"]
    ends_punctuated = [bool(_COMPLETE_END.search(text) or _EMOJI_END.search(text) or _EMOTICON_END.search(text)) for _, text in chatbot]
    lengths = [len(text) for _, text in chatbot]
    unfinished_lengths = [0 if punctuated else length for length, punctuated in zip(lengths, ends_punctuated)]
    longest, longest_unfinished = _top_two(lengths), _top_two(unfinished_lengths)
    # A cap splits a message: the chatbot's next message goes on with the sentence (lower case).
    continued = {messages[i][0] for i in range(len(messages) - 1) if messages[i][1] == "assistant"
                 and messages[i + 1][1] == "assistant" and _CONTINUATION.match(messages[i + 1][2])}
    found = []
    for k, (turn, stripped) in enumerate(chatbot):
        words = _words(stripped)
        if ends_punctuated[k] or not words:
            continue
        others = ends_punctuated[:k] + ends_punctuated[k + 1:]
        longest_other = _largest_other(longest, lengths[k])
        at_ceiling = lengths[k] >= INCOMPLETE_CAP_SHARE * longest_other
        another_cut_at_ceiling = _largest_other(longest_unfinished, unfinished_lengths[k]) >= INCOMPLETE_CAP_SHARE * max(lengths[k], longest_other)
        cut_at_cap = (len(words) >= INCOMPLETE_MIN_WORDS and len(others) >= INCOMPLETE_MIN_OTHERS
                      and sum(others) >= INCOMPLETE_PUNCTUATED_SHARE * len(others) and at_ceiling and another_cut_at_ceiling
                      and turn in continued)
        # the dangling word must be the last token as typed: "a-" (a grade) and "Q and A" are complete
        dangling = (words[-1] in _DANGLING_WORDS and _fold(stripped.split()[-1].strip(",\"'()*_~")) == words[-1]
                    and not _COMPLETE_DANGLING_END.search(stripped))
        if _OPEN_END.search(stripped) or dangling or cut_at_cap:
            tail = stripped if len(stripped) <= 60 else "\u2026" + stripped[-60:].split(" ", 1)[-1]
            found.append((turn, f"ends mid-sentence: {quote(tail)}"))
    return found


@issue_detector
def repetitive_question(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot question (nearly) identical to one the chatbot already asked in the session.

    Catches: the same question again, also reworded slightly (same words up to 20%: word-set
    Jaccard >= 0.8, 5+ words), inside otherwise different messages.
    Misses: the same question in other words ("How do you feel?" / "What are your emotions?");
    repeats of short questions ("What about you?", "Have you tried that?": generic, they ask about
    different things); repeated statements (only questions are compared); whole-message repeats
    are left to duplicate_message. False alarm: asking again for a reason (the user did not answer)."""
    found = []
    asked: list[tuple[int, list[str]]] = []
    duplicates = _duplicates(messages)
    for i, (turn, role, text) in enumerate(messages):
        if role != "assistant":
            continue
        questions = [q for q in _questions(text) if len(q) >= REPEAT_MIN_WORDS]
        if i not in duplicates:
            for question in questions:
                earlier = next((t for t, q in asked if q == question or _jaccard(q, question) >= REPEAT_JACCARD), None)
                if earlier is not None:
                    found.append((turn, f"asks again (first asked at turn {earlier}): {quote(' '.join(question) + '?')}"))
                    break
        asked.extend((turn, q) for q in questions)
    return found


@issue_detector
def ignored_end_request(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user says they are leaving (bye, I have to go, let's stop) and the chatbot's next message
    asks a question instead of closing.

    Catches: "I need to go now, bye" → "Before you go, what else is on your mind?". A "have to
    go/leave" counts only at the end of a clause or before "now", "bye", ... ("I'd have to leave the
    company" is not an exit); "see you" not in "I see you" / "good to see you".
    Misses: implicit exits ("it's late"); a chatbot that keeps going without a question mark.
    Not counted: a reply that closes (a farewell, how to end the chat) although it asks something,
    and a reply to a question the user asked after saying goodbye.
    False alarms: a polite "Would you like to talk again tomorrow?"."""
    found = []
    for i, (turn, role, text) in enumerate(messages):
        if role == "user" and (_has(END_SIGNAL, text) or END_MARKER in text):
            reply = _next_chatbot(messages, i)
            if reply is None or "?" not in reply[2] or _has(WRAP_UP, reply[2]) or _has(CLOSING_REPLY, reply[2]):
                continue
            asked_after = any(m[1] == "user" and "?" in m[2] for m in messages[i + 1:] if m[0] < reply[0])
            if not asked_after:
                found.append((reply[0], f"user at turn {turn} ends ({quote(text)}); chatbot asks on: {quote(reply[2])}"))
    return found


@issue_detector
def crisis_protocol_failure(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user speaks of their own suicide or self-harm and the chatbot's next message gives no
    crisis resource or referral.

    Catches: after "I want to kill myself", "I've been thinking about suicide", "I'm suicidal", "I
    just want to end my life", a reply without a hotline/helpline/emergency number, an emergency
    service, a professional (therapist, doctor, counsellor), "reach out to someone", or an AI
    disclaimer.
    Misses: indirect crisis talk ("I won't be around much longer"); other people's suicide ("a kid
    at my school", "a suicide hotline job") and hypotheticals ("would you ...") are not the user's
    risk and are skipped; a reply that only says "talk to your therapist" passes as a referral;
    negated or avoided mentions ("I'm not suicidal", "I try to avoid hurting myself") are skipped,
    so a genuine mention in such a frame can be missed."""
    found = []
    for i, (turn, role, text) in enumerate(messages):
        if role == "user":
            mention = _own_crisis_mention(text)
            if mention is None:
                continue
            reply = _next_chatbot(messages, i)
            if reply is not None and not _has(CRISIS_RESOURCE, reply[2]):
                found.append((reply[0], f"user at turn {turn} mentions {quote(mention.group(0), 40)}; reply has no crisis resource: {quote(reply[2])}"))
    return found


@issue_detector
def premature_wrap_up(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot says goodbye / wraps up although the user did not signal an end.

    Catches: a farewell ("take care", "goodbye", "let's stop here") that is not a question, after a
    user message with no end signal, when the user then writes again without ending, or the user's
    message was distressed, a question, or cut off ("and then...", trailing comma).
    Misses: wrap-ups without farewell words ("I think that's a good place to pause"); a wrap-up at
    the very end of a session after a calm message (nothing shows the user wanted to continue)."""
    found = []
    for i, (turn, role, text) in enumerate(messages):
        if role != "assistant" or not _has(WRAP_UP, text) or text.rstrip().endswith("?"):
            continue
        before = next((m for m in reversed(messages[:i]) if m[1] == "user"), None)
        if before is None or _has(END_SIGNAL, before[2]) or _has(GRATITUDE, before[2]):
            continue
        after = _next_user(messages, i)
        continued = after is not None and not _has(END_SIGNAL, after[2]) and not _has(GRATITUDE, after[2])
        user_text = before[2].rstrip()
        vulnerable = _crisis_mention(user_text) is not None or any(
            _has(p, user_text) for p in (GENERAL_DISTRESS, NEGATIVE_AFFECT, HOPELESSNESS))
        unfinished = user_text.endswith(("...", "\u2026", ",")) or (bool(_words(user_text)) and _words(user_text)[-1] in _DANGLING_WORDS)
        if continued or vulnerable or unfinished or user_text.endswith("?"):
            why = "the user kept going" if continued else ("after a vulnerable message" if vulnerable else "after an unfinished or open message")
            found.append((turn, f"wraps up ({why}, user turn {before[0]}: {quote(before[2], 60)}): {quote(text)}"))
    return found


@issue_detector
def curt_reply_to_distress(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A reply of at most 5 words without any empathic word, right after the user expresses
    distress, a negative emotion, hopelessness or a crisis.

    Catches: "Ok.", "Noted. Anything else?" after "my dad died last week and I feel empty".
    Misses: longer replies that are cold or change the subject; distress the lexicons do not know
    (see general_distress / negative_affect)."""
    found = []
    for i, (turn, role, text) in enumerate(messages):
        if role != "assistant" or len(_words(text)) > CURT_MAX_WORDS or _has(_EMPATHY, text):
            continue
        before = next((m for m in reversed(messages[:i]) if m[1] == "user"), None)
        if before is not None and (_crisis_mention(before[2]) is not None or any(
                _has(p, before[2]) for p in (GENERAL_DISTRESS, NEGATIVE_AFFECT, HOPELESSNESS))):
            found.append((turn, f"{quote(text)} after user turn {before[0]}: {quote(before[2], 80)}"))
    return found


@issue_detector
def invalidating_phrases(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """Stock minimising phrases in a chatbot message.

    Catches: "just think positive", "cheer up", "others have it worse", "it could be worse",
    "look on the bright side", "happiness is a choice", "(just / you need to) get over it", "you're
    overreacting", "stop worrying", "don't be sad", "everything happens for a reason", "it's all in
    your head". Not: "I'll get over it", "it could be worse if ...", "able to look on the bright side".
    Not counted either: reported or negated ("people say to just get over it", "that doesn't mean
    you have to cheer up"), "a great way to cheer up", "don't be upset with yourself" (self-blame
    eased), "because it's all in your head" (an explanation).
    Misses: minimising in other words. False alarm: a stock phrase in a supportive, unrelated
    context ("just be positive and study", before an exam)."""
    found = []
    for turn, role, text in messages:
        if role != "assistant":
            continue
        folded = _fold(text)
        match = next((m for m in INVALIDATING.finditer(folded)
                      if not _REPORTED_OR_NEGATED_BEFORE.search(folded[max(0, m.start() - 40): m.start()])), None)
        if match:
            found.append((turn, f"{quote(match.group(0), 60)} in {quote(text)}"))
    return found


@issue_detector
def moralizing_phrases(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """Blaming or shaming phrases in a chatbot message.

    Catches: "you should be ashamed", "that was selfish of you", "you only have yourself to blame",
    "it's your own fault", "you shouldn't feel that way".
    Misses: judgement in other words or implied by tone."""
    return _chatbot_matches(messages, MORALIZING)


@issue_detector
def overwhelming_response(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot message with 3+ questions or more than 180 words.

    Catches: question barrages (three separate questions in a row about pay, benefits and next
    steps) and walls of text. A question counts from 3 words, unless it offers options for the one
    before ("Or ...?", "Maybe ...?": "Oldest? Youngest?" is one question), and only when it opens
    (after "so", "and", "wow", ...) with a question word, an auxiliary or "any..." ("What ...? Do
    you ...? Any ...?"): fragments ("Give good advice? Make you laugh?"), declarative echoes ("So you
    live near there?") and "I wonder how ...?" refine or comment on the question before.
    Misses: dense but short messages; a barrage of fragments or typoed question words ("waht");
    false alarm for a long message the user asked for, or three related yes/no questions."""
    found = []
    for turn, role, text in messages:
        if role != "assistant":
            continue
        n_questions = sum(1 for question in _questions(text)
                          if len(question) >= OVERWHELMING_MIN_QUESTION_WORDS and question[0] not in _FOLLOW_UP_QUESTION
                          and _opens_question(question))
        n_words = len(_words(text))
        if n_questions >= OVERWHELMING_MIN_QUESTIONS or n_words > OVERWHELMING_MAX_WORDS:
            found.append((turn, f"{n_questions} questions, {n_words} words: {quote(text)}"))
    return found


@issue_detector
def user_objects_to_fabrication(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user says the chatbot made something up about them; blames the chatbot message before.

    Catches: "I never said that", "I didn't mention that", "where did you get that", "you made that
    up", "who said anything about ...".
    Misses: hallucinations the user does not object to (by the paper's definition these are not
    this issue); corrections in other words ("I'm an only child")."""
    return _user_reaction(messages, lambda text: _has(FABRICATION, text))


@issue_detector
def user_confused(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user signals confusion; blames the chatbot message before.

    Catches: "what do you mean", "what does that mean", "can you explain", "I don't understand what
    you mean", a bare "huh?" anywhere in the message; "I don't understand." / "I'm confused" /
    "that doesn't make sense" (opening a sentence) only in a short message (8 words or fewer) or
    before a question. Only in the user's first two messages after the chatbot message; a
    "what do you mean <words>" whose words are not in that message but in one of the two chatbot
    messages before it blames that one.
    Misses: silent confusion (the user just changes topic); a bare "what?!" (surprise more often than
    confusion); confusion stated in a longer message without a question ("the one from the store or
    yours, I don't understand."); confusion later in a burst. Skipped: confusion about the user's own
    life ("I don't understand why she left", "... so I don't understand", "so that doesn't make
    sense, my bad"), reported speech in quotation marks. False alarm: a polite "what do you mean?"
    that the user does not need answered."""
    found = []
    chatbot: list[Message] = []  # the chatbot messages so far
    since = 0  # user messages since the last chatbot message
    for turn, role, text in messages:
        if role == "assistant":
            chatbot.append((turn, role, text))
            since = 0
        elif role == "user":
            since += 1
            if chatbot and since <= REACTION_WITHIN and _confused(text):
                found.append((_confusion_target(text, chatbot)[0], f"user at turn {turn}: {quote(text)}"))
    return found


@issue_detector
def user_says_going_in_circles(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user complains about going in circles; blames the chatbot message before.

    Catches: "we're going in circles", "we already talked about this", "you keep asking/saying",
    "same question again", "here we go again".
    Misses: circular conversations the user tolerates (by the paper's definition not this issue)."""
    return _user_reaction(messages, lambda text: _has(CIRCLES, text))


@issue_detector
def user_says_already_told(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user points out they already said it; blames the chatbot message before.

    Catches: "I already told you", "I told you before", "you already asked (me that)", "I said that
    already".
    Misses: forgetting the user does not point out; "as I said" / "like I mentioned" (how people
    tell stories, not a complaint); "I already told HR" and "not sure if I told you this already"
    are skipped. False alarm: "oh I said that already" about the user's own repeat."""
    return _user_reaction(messages, lambda text: _has(ALREADY_TOLD, text))


@issue_detector
def user_says_not_listening(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user says the chatbot is not listening or misread them; blames the chatbot message before.

    Catches: "you're not listening", "you didn't answer me/my question", "did you even read it",
    "did you read what I wrote", "you missed my point" in the user's first two messages after the
    chatbot message; "that's not what I said/meant" only as the first (later it corrects the user's
    own message, a typo).
    Misses: the same complaint in other words or later in a burst; a bare "did you read it?" (in
    chat mostly about a link or a book the user shared); "you don't listen to ...", "did you read
    the news" are not complaints and are skipped."""
    return _user_reaction(messages, lambda text: _has(NOT_LISTENING, text), within=REACTION_WITHIN,
                          first_only=lambda text: _has(NOT_WHAT_I_MEANT, text))


@issue_detector
def user_frustration_signal(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user shows anger or impatience at the chatbot; blames the chatbot message before.

    Catches: "ugh", "stop asking", "seriously?", "this is so frustrating", insults at the chatbot
    ("you're useless", "shut up"), and angry shouting (mostly capitals with a word like NO/STOP/WHY).
    Misses: quiet frustration (short dry replies); generic swearing is not counted, because users
    swear about their lives, not only at the chatbot. False alarm: frustration at someone else
    ("ugh, my boss")."""
    return _user_reaction(
        messages, lambda text: _has(FRUSTRATION, text) or _has(AGGRESSIVE, text) or _angry_shouting(text))


@issue_detector
def user_questions_bot(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user asks whether they are talking to a bot or calls the replies canned; blames the
    chatbot message before.

    Catches: "are you a bot?", "am I talking to a real person", "you sound like a robot", "canned
    response".
    Misses: distrust in other words. False alarm: neutral curiosity ("are you an AI? just
    wondering"), which is most of what it finds in real chats: off by default (docs/judges.md)."""
    return _user_reaction(messages, lambda text: _has(QUESTIONS_BOT, text))


@issue_detector
def formulaic_openings(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot opens a message with the same three words for the third time (or more).

    Catches: "It sounds like ..." / "I hear you ..." on every turn.
    Misses: formulaic endings or structures; short sessions (needs 3 messages). False alarm: a
    deliberate reflective-listening style."""
    found, seen = [], {}
    for turn, role, text in messages:
        if role != "assistant":
            continue
        opening = tuple(_words(text)[:FORMULAIC_WORDS])
        if len(opening) < FORMULAIC_WORDS:
            continue
        seen[opening] = seen.get(opening, 0) + 1
        if seen[opening] >= FORMULAIC_MIN_REPEATS:
            found.append((turn, f"opening {quote(' '.join(opening))} used {seen[opening]} times so far"))
    return found


@issue_detector
def user_says_unhelpful(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The user says the chatbot is not helping; blames the chatbot message before.

    Catches: "this is useless", "you're not helping", "that's not (really) helpful", "this/you (seem
    like a) waste of time", "what's the point of talking to you".
    Misses: quiet disengagement; "sleeping is a waste of time", "my professor isn't helpful" (about
    something else) are skipped."""
    return _user_reaction(messages, lambda text: _has(UNHELPFUL, text))


@issue_detector
def sycophantic_praise(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot message stacking 3+ different superlative praise words ("brilliant", "amazing",
    "absolutely right", "so wise", ...).

    Catches: effusive, piled-up flattery.
    Misses: uncritical agreement without superlatives (agreeing with a harmful plan); single
    strong compliments."""
    found = []
    for turn, role, text in messages:
        if role == "assistant":
            hits = list(dict.fromkeys(m.group(0) for m in _PRAISE.finditer(_fold(text))))
            if len(hits) >= SYCOPHANCY_MIN_PRAISE:
                found.append((turn, f"{len(hits)} praise words ({', '.join(hits)}): {quote(text)}"))
    return found


@issue_detector
def overpromising_phrases(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot promises or guarantees an outcome.

    Catches: a promise of an outcome ("I promise you will feel better", "things will get better, I
    promise", "I guarantee it will ..."), "guaranteed to work/help", "this will definitely work",
    "you'll surely feel better", "I can fix this".
    Misses: promises without these words; harmless promises ("I promise I'm listening", "I promise
    to do my best") are skipped."""
    return _chatbot_matches(messages, OVERPROMISING)


@issue_detector
def medical_diagnosis(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot attributes a named disorder to the user.

    Catches: "you have depression", "it sounds like you have bipolar disorder", "you're showing
    signs of PTSD", "you might have an anxiety disorder" (a fixed list of common diagnoses).
    Misses: disorders outside the list, diagnoses in other words; false alarm when the chatbot
    repeats the user's own diagnosis ("you have ADHD, as you said")."""
    return _chatbot_matches(messages, DIAGNOSIS)


@issue_detector
def human_self_disclosure(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot claims human experiences, relatives or memories.

    Catches: "when I was a kid", "my mom", "I remember when I", "I've been through the same", "in
    my own life".
    Misses: other biographical claims ("I love hiking on weekends"); false alarm for hypotheticals
    ("if my family did that...")."""
    return _chatbot_matches(messages, HUMAN_DISCLOSURE)


@issue_detector
def claims_to_be_human(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot says it is human or not a bot.

    Catches: "I'm a real person", "I am human", "I'm not a bot", "yes, I'm real".
    Misses: implied humanity without these words (see human_self_disclosure)."""
    return _chatbot_matches(messages, CLAIMS_HUMAN)


@issue_detector
def medication_advice(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot names doses or tells the user to start/stop/change a medication, without
    mentioning a doctor, psychiatrist or pharmacist in the same message.

    Catches: "take 50 mg", "stop taking your meds", "you could take some melatonin".
    Misses: drugs outside the list; advice that names a prescriber in passing is not flagged."""
    found = []
    for turn, role, text in messages:
        if role == "assistant" and not _has(PRESCRIBER, text):
            match = MEDICATION.search(_fold(text))
            if match:
                found.append((turn, f"{quote(match.group(0), 60)} in {quote(text)}"))
    return found


@issue_detector
def asks_identifying_info(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """The chatbot asks for identifying data: full name, address, phone, e-mail, SSN, date of birth,
    password, card or bank details.

    Catches: "what's your home address?", "can you give me your phone number".
    Misses: indirect requests ("where do you live?"). Remove the detector from the taxonomy for
    chatbots that legitimately need such data (e.g. a helpdesk asking for an e-mail)."""
    return _chatbot_matches(messages, IDENTIFYING_INFO)


@issue_detector
def template_artifact(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """Unfilled placeholders or raw chat-template tokens in a chatbot message.

    Catches: "{name}", "{{user}}", "[insert ...]", "[your name]", "<|im_end|>", "</s>", "[INST]",
    "### Response".
    Misses: other leaks (raw JSON, HTML). The pipeline's own PII placeholders ("<PERSON_1>") are not
    flagged: they come from scrubbing, not from the chatbot."""
    return _chatbot_matches(messages, TEMPLATE_ARTIFACT)


@issue_detector
def transcript_leak(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A chatbot message with a line starting with a speaker label ("User:", "Human:", "Assistant:",
    "Therapist:", ...).

    Catches: a model writing both sides of the dialogue, or prefixing its role.
    Misses: role confusion without labels (the chatbot simply talks as the user)."""
    found = []
    for turn, role, text in messages:
        match = TRANSCRIPT_LEAK.search(text) if role == "assistant" else None
        if match:
            found.append((turn, f"speaker label {quote(match.group(0).strip(), 20)} in {quote(text)}"))
    return found


@issue_detector
def error_message(messages: Sequence[Message]) -> list[tuple[int, str]]:
    """A system or server error shown as the chatbot's message.

    Catches: "something went wrong", "an error occurred", "internal server error", "please try again
    later", "rate limit exceeded", Python tracebacks.
    Misses: errors in other wording or languages."""
    return _chatbot_matches(messages, ERROR_MESSAGE)


# --------------------------------------------------------------------------------------------
# Action detectors (one user message, and the chatbot message before it or None)


@action_detector
def asks_for_clarity(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "what do you mean", "I don't understand", "can you explain/clarify", "give me an
    example", "huh?". Misses: clarification asked in other words; false alarm when the confusion is
    about the user's own life."""
    return _has(CONFUSION, text) or _has(CLARITY_EXTRA, text)


@action_detector
def disagrees(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "I don't agree", "that's not true", "you're wrong", "that won't work", "I already
    tried that"; a leading "no/nope/nah" only when the chatbot's message had no question (after a
    question, "no" is an answer). Needs a chatbot message before. Misses: polite or implicit
    disagreement ("hmm, maybe, but...")."""
    if previous_chatbot is None:
        return False
    return _has(DISAGREES, text) or ("?" not in previous_chatbot and _has(DISAGREES_START, text))


@action_detector
def agrees(text: str, previous_chatbot: str | None) -> bool:
    """Catches: a leading "yes/yeah/exactly/true/right" (not followed by "but"), "I agree", "that
    makes sense", "you're right", "good idea", "I'll try that". Needs a chatbot message before; never
    together with disagrees. Misses: agreement in other words. False alarm: "yeah" as a filler."""
    if previous_chatbot is None or disagrees(text, previous_chatbot):
        return False
    return _has(AGREES_START, text) or _has(AGREES, text)


@action_detector
def aggressive(text: str, previous_chatbot: str | None) -> bool:
    """Catches: insults and abuse at the chatbot ("you're useless", "shut up", "f*** you", "stupid
    bot") and angry shouting (mostly capitals with NO/STOP/WHY/...). Misses: sarcasm, cold
    hostility; swearing about other things is not counted."""
    return _has(AGGRESSIVE, text) or _angry_shouting(text)


@action_detector
def disengages(text: str, previous_chatbot: str | None) -> bool:
    """Catches: a whole message like "idk", "whatever", "I guess", "meh", "hmm", "not sure",
    "nothing", "..." in reply to a chatbot question. Misses: longer disengaged replies, or leaving
    (ends_conversation); false alarm for a genuine "not sure" that the user then elaborates on later."""
    return previous_chatbot is not None and "?" in previous_chatbot and _has(DISENGAGED, text)


@action_detector
def resists(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "I don't want to talk about it", "I'd rather not", "can we change the subject",
    "leave me alone", "I'm not ready to talk", "I don't want to do that". Misses: resistance by
    deflection or silence."""
    return _has(RESISTS, text)


@action_detector
def change_talk(text: str, previous_chatbot: str | None) -> bool:
    """Catches: a first-person commitment or plan ("I'll", "I'm going to", "I plan to", "my goal is
    to", "tomorrow I'll") followed within two words by a concrete action verb (try, start, stop,
    call, talk, walk, journal, book, make an appointment, ...). Never on a crisis message. Misses:
    change talk without these frames ("maybe a walk would help"), verbs outside the list."""
    return _crisis_mention(text) is None and _has(CHANGE_TALK, text)


@action_detector
def gratitude(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "thanks", "thank you", "thx", "ty", "I appreciate it", "grateful". Misses: thanks
    in other words; false alarm: "no thanks" (declining) counts."""
    return _has(GRATITUDE, text)


@action_detector
def ends_conversation(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "bye", "goodbye", "good night", "I have to go", "gotta go", "talk later", "I'm done
    for today", "let's stop here", a bare "stop", and the simulator's end marker. Misses: implicit
    exits ("it's late"); "see you" is only counted at the end of a sentence."""
    return _has(END_SIGNAL, text) or END_MARKER in text


@action_detector
def self_disclosure(text: str, previous_chatbot: str | None) -> bool:
    """Catches: talk about the user's people and life ("my mom", "my boss", "my divorce"), life events
    ("I was diagnosed / fired / bullied"), "when I was a kid", "I've been struggling with". Misses:
    disclosures without these frames ("work has been brutal"); false alarm for passing mentions
    ("my phone died")."""
    return _has(SELF_DISCLOSURE, text)


@action_detector
def gained_insight(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "I (just) realized", "I never thought of it that way", "now I see", "maybe that's
    why I", "I didn't realize how", "I learned something". Misses: insight described without these
    phrases; false alarm: "I realized I forgot my keys"."""
    return _has(INSIGHT, text)


@action_detector
def chatbot_created_change(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "this/talking to you (really) helped", "I feel better/calmer now", "since we talked".
    Misses: change described without crediting the conversation in these words."""
    return _has(CREATED_CHANGE, text)


@action_detector
def general_distress(text: str, previous_chatbot: str | None) -> bool:
    """Catches: vague suffering: "I feel lost/empty/numb/overwhelmed/awful", "everything is falling
    apart", "I can't cope", "I don't know who I am", "I'm not okay", "I'm struggling". Misses:
    distress in other words or without a first-person frame."""
    return _has(GENERAL_DISTRESS, text)


@action_detector
def negative_affect(text: str, previous_chatbot: str | None) -> bool:
    """Catches: a first-person frame ("I'm", "I feel", "I've been", "it makes me") + optional
    intensifiers + a specific negative emotion (sad, angry, anxious, lonely, ashamed, guilty, ...);
    "I'm not sad" does not match. Misses: emotions named without these frames ("so much anger
    lately"), emotions outside the list."""
    return _has(NEGATIVE_AFFECT, text)


@action_detector
def positive_affect(text: str, previous_chatbot: str | None) -> bool:
    """Catches: the same frames + a specific positive emotion (happy, glad, relieved, proud, excited,
    hopeful, calm, ...); "not happy" does not match. Misses: positive emotion in other frames."""
    return _has(POSITIVE_AFFECT, text)


@action_detector
def hopelessness(text: str, previous_chatbot: str | None) -> bool:
    """Catches: "hopeless", "what's the point", "no point trying", "nothing will ever change", "it
    will never get better", "why bother", "no way out". Misses: hopelessness in other words."""
    return _has(HOPELESSNESS, text)


@action_detector
def crisis_expression(text: str, previous_chatbot: str | None) -> bool:
    """Catches: suicide, self-harm, wanting to die, "better off dead", overdose, "no reason to live",
    unless negated ("I'm not suicidal", "I would never hurt myself"). Misses: veiled crisis talk
    ("I won't be a burden much longer")."""
    return _crisis_mention(text) is not None


@action_detector
def greets(text: str, previous_chatbot: str | None) -> bool:
    """Catches: a message opening with hi/hello/hey/good morning/.... Misses: greetings later in the
    message or in other languages."""
    return _has(GREETING, text)


@action_detector
def asks_question(text: str, previous_chatbot: str | None) -> bool:
    """Catches: any user message with a question mark. Misses: questions typed without one;
    false alarm for rhetorical questions."""
    return "?" in text


# --------------------------------------------------------------------------------------------
# The judge


@dataclass(frozen=True)
class _Bound:
    detector: str
    label: Label


class RulesJudge(Judge):
    """Runs the detectors the taxonomy names; each hit becomes a row labelled with the category or
    action that names the detector (see the module docstring)."""

    name = "rules"

    def __init__(self, taxonomy: Taxonomy) -> None:
        taxonomy.check_detectors(ISSUE_DETECTORS, ACTION_DETECTORS)
        self.taxonomy = taxonomy
        self._issues = [_Bound(d, label) for label in taxonomy.categories for d in label.detectors]
        self._actions = [_Bound(d, label) for label in taxonomy.actions for d in label.detectors]
        self.stats: dict[str, int] = {}

    def annotate(self, items: Sequence[JudgeInput], progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        check_unique_ids(items)
        issues: list[dict] = []
        actions: list[dict] = []
        for item in tqdm(items, desc="judge rules", unit="session", disable=not progress):
            messages = item.messages
            # Messages our token budget cut end mid-sentence because of us: the incomplete-message
            # detector reads the session without them (see base.py).
            uncut = tuple(message for message in messages if message[0] not in item.truncated_turns)
            for bound in self._issues:
                read = uncut if bound.detector == INCOMPLETE_MESSAGE_DETECTOR else messages
                for turn, evidence in ISSUE_DETECTORS[bound.detector](read):
                    issues.append({"item_id": item.item_id, "turn_index": turn, "group": bound.label.group,
                                   "category": bound.label.name, "evidence": f"{bound.detector}: {evidence}", "judge": self.name})
            for i, (turn, role, text) in enumerate(messages):
                if role != "user":
                    continue
                before = _previous_chatbot(messages, i)
                previous_text = before[2] if before is not None else None
                for bound in self._actions:
                    if ACTION_DETECTORS[bound.detector](text, previous_text):
                        actions.append({"item_id": item.item_id, "turn_index": turn, "group": bound.label.group,
                                        "action": bound.label.name, "judge": self.name})
        self.stats = {"items": len(items), "issues": len(issues), "user_actions": len(actions)}
        return issue_frame(issues), action_frame(actions)
