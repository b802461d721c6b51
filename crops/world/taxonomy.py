"""Topic taxonomy of the platform simulator: real English words, colloquial synonyms, polysemy.

Videos and queries draw their text from here. Canonical `words` are what head queries and plain
captions use; `colloquial` words describe the same thing in an uploader's own slang, so a lexical
retriever misses them. Words in `POLYSEMOUS` sit in the canonical words of two topics from
different domains, which makes queries such as "python" ambiguous. `check` enforces the rules.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

__all__ = ["FILLER", "POLYSEMOUS", "STOPWORDS", "TOPICS", "Facet", "Topic", "check", "stem"]


@dataclass(frozen=True)
class Facet:
    """A concrete sub-intent of a topic, e.g. "for loops" in programming."""

    name: str
    words: tuple[str, ...]
    colloquial: tuple[str, ...]


@dataclass(frozen=True)
class Topic:
    """A video category; topics sharing a `domain` are loosely related."""

    name: str
    domain: str
    words: tuple[str, ...]
    colloquial: tuple[str, ...]
    facets: tuple[Facet, ...]


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _f(name: str, words: str, colloquial: str) -> Facet:
    return Facet(name, _split(words), _split(colloquial))


def _t(name: str, domain: str, words: str, colloquial: str, *facets: Facet) -> Topic:
    return Topic(name, domain, _split(words), _split(colloquial), facets)


TOPICS: tuple[Topic, ...] = (
    # --- tech ---
    _t(
        "programming",
        "tech",
        "python java programming code software developer",
        "dev hacker geek nerd",
        _f("for loops", "loop iterate range index", "repeat cycle rerun"),
        _f("debugging", "debug breakpoint traceback exception", "glitch crash broken oops"),
        _f("web development", "html css javascript frontend", "website webdev homepage"),
        _f("algorithms", "algorithm sorting recursion complexity", "leetcode brainteaser shortcut"),
        _f("version control", "git commit branch merge", "backup undo snapshot"),
    ),
    _t(
        "deep learning",
        "tech",
        "transformer neural network gradient tensor pytorch",
        "chatbot robot machine wizardry",
        _f("attention", "attention softmax embedding positional", "focus spotlight context"),
        _f("training loop", "epoch optimizer backprop loss", "teaching studying cramming"),
        _f("convolution", "convolution kernel pooling stride", "vision pixel eyesight"),
        _f("gpu compute", "cuda gpu vram nvidia", "graphics compute cloud"),
        _f("language models", "llm tokenizer prompt corpus", "chatgpt gpt copilot assistant"),
    ),
    _t(
        "gadgets",
        "tech",
        "apple mouse laptop keyboard gadget electronics",
        "gizmo tech nifty",
        _f("phone review", "iphone android smartphone samsung", "mobile cellphone handset"),
        _f("unboxing", "unboxing packaging accessories", "unwrap freebies loot"),
        _f("mechanical keyboards", "keycaps switches mechanical typing", "clicky thock clack"),
        _f("laptop buying", "macbook chromebook ultrabook", "lappy portable cheapo"),
        _f("gaming mouse", "dpi sensor wireless ergonomic", "aim grip flick"),
    ),
    # --- nature ---
    _t(
        "reptiles",
        "nature",
        "python snake reptile serpent constrictor",
        "slithery scaly creepy",
        _f("venomous snakes", "venom cobra viper rattlesnake", "deadly poison toxic"),
        _f("snake feeding", "feeding prey rodent", "chomp gulp devour"),
        _f("shedding", "shedding ecdysis molt", "peeling wrinkly flaky"),
        _f("lizards", "gecko iguana chameleon lizard", "dragon beardie dino"),
        _f("crocodiles", "crocodile alligator caiman gharial", "croc gator swamp"),
    ),
    _t(
        "big cats",
        "nature",
        "jaguar lion tiger leopard cheetah feline",
        "beast apex majestic fierce",
        _f("lion pride", "pride mane lioness cub", "fam squad crew"),
        _f("hunting", "hunt stalk ambush kill", "chase pounce takedown"),
        _f("sprinting", "sprint acceleration fastest", "zoom blur flash"),
        _f("safari", "safari savanna serengeti reserve", "bush wild jungle"),
        _f("conservation", "conservation poaching endangered habitat", "rescue extinct sanctuary"),
    ),
    _t(
        "birds",
        "nature",
        "crane bird ornithology avian flock",
        "birb birdie feathery",
        _f("parrots", "parrot macaw cockatoo parakeet", "polly squawk chatterbox"),
        _f("birds of prey", "eagle hawk falcon raptor", "swoop screech divebomb"),
        _f("feeders", "birdfeeder birdseed suet birdhouse", "backyard porch patio"),
        _f("migration", "migration flyway wetland", "journey southbound travelers"),
        _f("birdsong", "birdsong chirp warbler", "tweet whistle peep cheep"),
    ),
    # --- food ---
    _t(
        "baking",
        "food",
        "apple beat baking pastry dough flour",
        "treats goodies sweets scrumptious",
        _f("sourdough", "sourdough starter levain crumb", "tangy artisan rustic"),
        _f("cakes", "cake sponge frosting buttercream", "icing bday sprinkles"),
        _f("cookies", "cookie biscuit chocolate snickerdoodle", "chewy gooey choc"),
        _f("apple pie", "pie crust cinnamon lattice", "grandma cozy autumn"),
        _f("whipping", "whisk meringue peaks mixer", "fluffy airy pillowy"),
    ),
    _t(
        "coffee",
        "food",
        "coffee java press espresso barista caffeine",
        "cuppa joe brew jitters",
        _f("latte art", "latte rosetta microfoam", "heart swirl foamy"),
        _f("pour over", "pourover chemex filter gooseneck", "drip trickle hipster"),
        _f("espresso machines", "portafilter grinder tamper crema", "shots buzz jolt"),
        _f("cold brew", "coldbrew concentrate nitro steep", "icy frosty refreshing"),
        _f("roasting", "roast arabica robusta beans", "toasty nutty bold"),
    ),
    _t(
        "street food",
        "food",
        "street vendor stall market cuisine",
        "eats grub munchies foodie",
        _f("tacos", "taco tortilla guacamole carnitas", "mexican tuesday cheesy"),
        _f("noodles", "ramen noodles broth wok", "slurp spicy comfort"),
        _f("skewers", "skewer kebab grill satay", "bbq sticks sizzling"),
        _f("fried snacks", "fried tempura fritter batter", "crispy greasy crunchy"),
        _f("dumplings", "dumpling gyoza wonton bao", "potsticker juicy plump"),
    ),
    # --- sport ---
    _t(
        "football",
        "sport",
        "pitch drill football soccer league",
        "footy futbol baller matchday",
        _f("free kicks", "freekick knuckleball setpiece curve", "screamer worldie golazo"),
        _f("goalkeeping", "goalkeeper penalty parry save", "keeper gloves denied"),
        _f("dribbling", "dribble feint stepover nutmeg", "skillz juke tekkers"),
        _f("transfers", "transfer signing contract", "rumor gossip saga"),
        _f("tactics", "tactics formation counterattack possession", "gameplan lineup chalkboard"),
    ),
    _t(
        "fishing",
        "sport",
        "bass current fishing angler catch",
        "fishin fishy bites",
        _f("lures", "lure crankbait spinnerbait swimbait", "bait wiggler flashy"),
        _f("fly fishing", "fly tippet nymph caddis", "feathers dainty purist"),
        _f("ice fishing", "ice auger shanty jigging", "frozen hardwater arctic"),
        _f("catch and release", "release barbless landing", "unhook gentle ethical"),
        _f("big catches", "trophy record heaviest", "lunker whopper hawg"),
    ),
    _t(
        "fitness",
        "sport",
        "press fitness gym workout exercise",
        "gains swole beastmode pumped",
        _f("bench press", "bench chest barbell pectoral", "pecs pushday gymbro"),
        _f("squats", "squat quadriceps glute hamstring", "legday booty quads"),
        _f("running", "running marathon endurance treadmill", "jogging cardio huffing"),
        _f("yoga", "yoga asana flexibility vinyasa", "bendy zen stretchy"),
        _f("calisthenics", "calisthenics pullup pushup bodyweight", "muscleup monkeybars shredded"),
    ),
    # --- music ---
    _t(
        "instruments",
        "music",
        "bass guitar piano violin instrument",
        "axe ivories fiddle jamming",
        _f("guitar chords", "chord fretboard capo strumming", "campfire wonderwall noob"),
        _f("bass lines", "bassline slap fretless", "thump funky boomy"),
        _f("drumming", "drum snare cymbal drumstick", "skins bashing pounding"),
        _f("piano lessons", "scales arpeggio sonata metronome", "keys tinkling recital"),
        _f("violin playing", "bow rosin pizzicato concerto", "squeaky scratchy fancy"),
    ),
    _t(
        "singing",
        "music",
        "pitch star singing vocal voice song",
        "crooning karaoke tunes",
        _f("high notes", "falsetto soprano octave belting", "goosebumps chills squeal"),
        _f("breathing technique", "breathing diaphragm posture warmup", "lungs belly puff"),
        _f("harmony", "harmony choir acapella duet", "blend barbershop angelic"),
        _f("vibrato", "vibrato timbre resonance tremolo", "wobble silky buttery"),
        _f("auditions", "audition talent judge contestant", "idol showstopper xfactor"),
    ),
    _t(
        "dance",
        "music",
        "beat dance choreography routine rhythm",
        "moves grooves boogie",
        _f("hip hop", "hiphop breakdance popping krump", "bboy cypher freestyle"),
        _f("ballet", "ballet pirouette pointe arabesque", "tutu twirl graceful"),
        _f("latin dance", "salsa bachata tango rumba", "hips sassy sensual"),
        _f("tiktok dances", "tiktok shuffle footwork tutting", "slay vibing fyp"),
        _f("partner dance", "waltz ballroom foxtrot quickstep", "wedding couple prom"),
    ),
    # --- home ---
    _t(
        "construction",
        "home",
        "crane drill construction contractor diy",
        "tradie handyman hardhat",
        _f("concrete", "concrete cement rebar formwork", "slab sidewalk driveway"),
        _f("tiling", "tile grout mortar trowel", "backsplash bathroom mosaic"),
        _f("woodworking", "woodworking lumber chisel joinery", "sawdust timber whittling"),
        _f("drywall", "drywall plaster spackle", "sheetrock gyprock patching"),
        _f("demolition", "demolition excavator bulldozer jackhammer", "smash teardown rubble"),
    ),
    _t(
        "gardening",
        "home",
        "mole garden plant horticulture botanical",
        "yard green leafy plantmom",
        _f("vegetables", "vegetable tomato zucchini harvest", "veggies homegrown produce"),
        _f("lawn care", "lawn mower turf fertilizer", "grass stripes manicured"),
        _f("composting", "compost mulch manure humus", "scraps worms rotting"),
        _f("pruning", "prune shears secateurs hedge", "trim snip tidy"),
        _f("houseplants", "houseplant succulent monstera pothos", "greenery planties windowsill"),
    ),
    _t(
        "pets",
        "home",
        "mouse pet dog cat puppy kitten",
        "doggo pupper kitty furbaby",
        _f("dog training", "obedience leash clicker recall", "goodboy behave naughty"),
        _f("cat behavior", "catnip litter purr hairball", "zoomies chonk blep derpy"),
        _f("small pets", "hamster gerbil rabbit ferret", "bunny hammy critter"),
        _f("aquarium", "aquarium goldfish betta guppy", "tank bubbles nemo"),
        _f("vet visits", "veterinarian vaccination spay neuter", "vet jabs cone"),
    ),
    # --- vehicles ---
    _t(
        "cars",
        "vehicles",
        "jaguar car automotive sedan coupe",
        "whip ride wheels",
        _f("engines", "engine horsepower cylinder turbocharger", "turbo vroom oomph"),
        _f("detailing", "detailing polish wax ceramic", "shine glossy spotless"),
        _f("drifting", "drift handbrake oversteer burnout", "sideways skid tandem"),
        _f("electric cars", "tesla charging autopilot hybrid", "plugin silent zippy"),
        _f("car crashes", "collision accident dashcam insurance", "wreck pileup totaled"),
    ),
    _t(
        "motorbikes",
        "vehicles",
        "motorcycle motorbike biker superbike scooter",
        "moto hog chopper",
        _f("wheelies", "wheelie stoppie stunt", "hooligan rowdy reckless"),
        _f("motocross", "motocross enduro supercross", "dirt braap jumps"),
        _f("riding gear", "helmet visor armor kevlar", "lid kit swag"),
        _f("touring", "touring saddlebag pannier odometer", "roadtrip cruising wanderlust"),
        _f("maintenance", "sprocket carburetor clutch gasket", "wrenching tinkering garage"),
    ),
    _t(
        "trucks",
        "vehicles",
        "truck lorry pickup freight cargo",
        "rig semi hauler",
        _f("monster trucks", "monster stadium backflip", "crushing chaos carnage"),
        _f("long haul", "interstate highway logbook dispatch", "otr truckstop sleeper"),
        _f("offroad", "offroad winch suspension axle", "mudding lifted rugged"),
        _f("diesel engines", "diesel torque injector emissions", "coal smoke rumble"),
        _f("towing", "towing hitch trailer payload", "pulling lugging beefy"),
    ),
    # --- science ---
    _t(
        "power grids",
        "science",
        "transformer current grid voltage electricity substation",
        "juice zap mains",
        _f("transmission lines", "pylon transmission insulator kilovolt", "cables towers overhead"),
        _f("blackouts", "blackout outage brownout restoration", "powercut darkness candles"),
        _f("arc flash", "arc flashover fault breaker", "boom fireball sparks"),
        _f("solar power", "solar photovoltaic inverter rooftop", "sunshine offgrid renewables"),
        _f("home wiring", "wiring outlet conduit electrician", "rewire lineman socket"),
    ),
    _t(
        "astronomy",
        "science",
        "star astronomy galaxy planet telescope cosmos",
        "space sky stargazing",
        _f("black holes", "singularity accretion horizon", "void abyss portal"),
        _f("moon", "lunar crater eclipse moon", "supermoon bloodmoon luna"),
        _f("mars", "mars rover martian perseverance", "alien dusty spacex"),
        _f("deep sky", "nebula exposure milkyway deepsky", "wallpaper dreamy starry"),
        _f("rockets", "rocket launch booster orbit", "liftoff blastoff countdown"),
    ),
    _t(
        "chemistry",
        "science",
        "mole chemistry chemical molecule laboratory",
        "lab potions boffin",
        _f("reactions", "reaction exothermic catalyst combustion", "fizz kaboom explosion"),
        _f("periodic table", "periodic element isotope atomic", "blocks symbols mendeleev"),
        _f("acids and bases", "acid alkaline titration indicator", "corrosive sour burning"),
        _f("crystals", "crystal saturated geode", "gems sparkly bling"),
        _f("home experiments", "experiment beaker flask pipette", "kitchen messy tricks"),
    ),
)

POLYSEMOUS: dict[str, tuple[str, str]] = {
    "transformer": ("deep learning", "power grids"),
    "python": ("programming", "reptiles"),
    "java": ("programming", "coffee"),
    "apple": ("gadgets", "baking"),
    "mouse": ("gadgets", "pets"),
    "jaguar": ("big cats", "cars"),
    "bass": ("instruments", "fishing"),
    "crane": ("construction", "birds"),
    "pitch": ("football", "singing"),
    "drill": ("construction", "football"),
    "press": ("fitness", "coffee"),
    "current": ("power grids", "fishing"),
    "star": ("astronomy", "singing"),
    "beat": ("dance", "baking"),
    "mole": ("chemistry", "gardening"),
}

FILLER: tuple[str, ...] = _split(
    "video vlog quick guide amazing daily tips easy funny new top best compilation challenge"
    " review tutorial viral trending epic cool insane satisfying beginner shorts highlights"
    " ultimate awesome crazy live explained"
)

N_TOPICS = 24
N_DOMAINS = 8
TOPICS_PER_DOMAIN = 3
FACETS_PER_TOPIC = 5
MIN_POLYSEMOUS = 8
MAX_POLYSEMOUS_PER_TOPIC = 2
# (min, max) number of words per field.
SIZES = {
    "topic words": (5, 7),
    "topic colloquial": (3, 5),
    "facet words": (3, 4),
    "facet colloquial": (3, 4),
}

_WORD = re.compile(r"^[a-z]{3,14}$")
_NAME = re.compile(r"^[a-z]+( [a-z]+)*$")
# English stopwords of 3+ letters (NLTK's list, as used by BM25 tokenisers) plus a few more.
STOPWORDS = frozenset(
    _split(
        """
    about above after again against all and any are because been before being below between
    both but can did does doing down during each few for from further had has have having her
    here hers herself him himself his how into its itself just more most myself nor not now off
    once only other our ours ourselves out over own same she should some such than that the
    their theirs them themselves then there these they this those through too under until very
    was were what when where which while who whom why will with you your yours yourself
    yourselves ain aren couldn didn doesn don hadn hasn haven isn mightn mustn needn shan
    shouldn wasn weren won wouldn also could would may might must shall yet get got
    """
    )
)


def stem(word: str) -> str:
    """Crude suffix stripping ("baking", "bakes" -> "bak"): words sharing a stem would merge
    under a stemming tokeniser, so each stem may belong to one word only."""
    w = word
    if w.endswith(("ies", "ied")) and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        w = w[:-1]
    for suffix, keep in (("ing", 3), ("ed", 3), ("er", 4), ("es", 3)):
        if w.endswith(suffix) and len(w) - len(suffix) >= keep:
            w = w[: -len(suffix)]
            if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            break
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    return w


def _homes(taxonomy: tuple[Topic, ...]) -> list[tuple[str, str, bool]]:
    """Every (word, place, is_colloquial) in the taxonomy, in order."""
    out: list[tuple[str, str, bool]] = []
    for topic in taxonomy:
        out += [(w, f"topic {topic.name!r} words", False) for w in topic.words]
        out += [(w, f"topic {topic.name!r} colloquial", True) for w in topic.colloquial]
        for facet in topic.facets:
            place = f"facet {topic.name!r}/{facet.name!r}"
            out += [(w, f"{place} words", False) for w in facet.words]
            out += [(w, f"{place} colloquial", True) for w in facet.colloquial]
    return out


def _check_word(word: str, place: str) -> None:
    if not isinstance(word, str) or not _WORD.match(word):
        raise ValueError(f"word {word!r} in {place} is not 3-14 lowercase ASCII letters")
    if word in STOPWORDS:
        raise ValueError(f"word {word!r} in {place} is a stopword")


def _check_structure(taxonomy: tuple[Topic, ...]) -> None:
    if len(taxonomy) != N_TOPICS:
        raise ValueError(f"taxonomy has {len(taxonomy)} topics, expected {N_TOPICS}")
    names = Counter(t.name for t in taxonomy)
    for name, n in names.items():
        if n > 1:
            raise ValueError(f"topic name {name!r} is used by {n} topics")
    domains = Counter(t.domain for t in taxonomy)
    if len(domains) != N_DOMAINS:
        raise ValueError(f"taxonomy has {len(domains)} domains, expected {N_DOMAINS}")
    for domain, n in domains.items():
        if n != TOPICS_PER_DOMAIN:
            raise ValueError(f"domain {domain!r} has {n} topics, expected {TOPICS_PER_DOMAIN}")
    for topic in taxonomy:
        for label in (topic.name, topic.domain):
            if not _NAME.match(label):
                raise ValueError(f"topic/domain name {label!r} is not lowercase words")
        if len(topic.facets) != FACETS_PER_TOPIC:
            raise ValueError(
                f"topic {topic.name!r} has {len(topic.facets)} facets, expected {FACETS_PER_TOPIC}"
            )
        fnames = Counter(f.name for f in topic.facets)
        for fname, n in fnames.items():
            if n > 1 or not _NAME.match(fname):
                raise ValueError(f"facet name {fname!r} in topic {topic.name!r} is bad or reused")
        fields = [("topic words", topic.name, topic.words)]
        fields.append(("topic colloquial", topic.name, topic.colloquial))
        for f in topic.facets:
            fields.append(("facet words", f"{topic.name}/{f.name}", f.words))
            fields.append(("facet colloquial", f"{topic.name}/{f.name}", f.colloquial))
        for kind, where, words in fields:
            lo, hi = SIZES[kind]
            if not lo <= len(words) <= hi:
                raise ValueError(f"{kind} of {where!r} has {len(words)} words, expected {lo}-{hi}")


def _check_polysemous(
    taxonomy: tuple[Topic, ...],
    polysemous: dict[str, tuple[str, str]],
    places: dict[str, list[str]],
) -> None:
    if len(polysemous) < MIN_POLYSEMOUS:
        raise ValueError(f"only {len(polysemous)} polysemous words, expected >= {MIN_POLYSEMOUS}")
    by_name = {t.name: t for t in taxonomy}
    per_topic: Counter[str] = Counter()
    for word, pair in polysemous.items():
        _check_word(word, "POLYSEMOUS")
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"polysemous {word!r} needs two different topics, got {pair!r}")
        for name in pair:
            if name not in by_name:
                raise ValueError(f"polysemous {word!r} names unknown topic {name!r}")
            per_topic[name] += 1
        dominant, minor = by_name[pair[0]], by_name[pair[1]]
        if dominant.domain == minor.domain:
            raise ValueError(
                f"polysemous {word!r}: topics {dominant.name!r} and {minor.name!r} share "
                f"domain {dominant.domain!r}"
            )
        expected = sorted(f"topic {t.name!r} words" for t in (dominant, minor))
        if sorted(places.get(word, [])) != expected:
            raise ValueError(
                f"polysemous {word!r} must be in exactly {expected}, found in "
                f"{places.get(word, [])}"
            )
    for name, n in per_topic.items():
        if n > MAX_POLYSEMOUS_PER_TOPIC:
            raise ValueError(
                f"topic {name!r} holds {n} polysemous words, at most {MAX_POLYSEMOUS_PER_TOPIC}"
            )


def check(
    taxonomy: tuple[Topic, ...] = TOPICS,
    *,
    polysemous: dict[str, tuple[str, str]] | None = None,
    filler: tuple[str, ...] | None = None,
) -> None:
    """Raise ValueError naming the offending word/topic when a taxonomy rule is broken.

    `polysemous` and `filler` default to the module's POLYSEMOUS and FILLER.
    """
    polysemous = POLYSEMOUS if polysemous is None else polysemous
    filler = FILLER if filler is None else filler
    _check_structure(taxonomy)
    homes = _homes(taxonomy)
    for word, place, _ in homes:
        _check_word(word, place)
    canonical = {w for w, _, colloquial in homes if not colloquial}
    for word, place, colloquial in homes:
        if colloquial and word in canonical:
            raise ValueError(f"colloquial word {word!r} in {place} is also a canonical word")
    places: dict[str, list[str]] = defaultdict(list)
    for word, place, _ in homes:
        places[word].append(place)
    for word, where in places.items():
        if len(where) > 1 and word not in polysemous:
            raise ValueError(f"word {word!r} has {len(where)} homes: {', '.join(where)}")
    _check_polysemous(taxonomy, polysemous, places)
    for n, word in enumerate(filler):
        _check_word(word, "FILLER")
        if word in places:
            raise ValueError(f"filler word {word!r} is also in {places[word][0]}")
        if word in filler[:n]:
            raise ValueError(f"filler word {word!r} is repeated")
    stems: dict[str, str] = {}
    for word in [*places, *filler]:
        other = stems.setdefault(stem(word), word)
        if other != word:
            raise ValueError(f"words {other!r} and {word!r} share the stem {stem(word)!r}")
