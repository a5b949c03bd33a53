"""The words lifecycle streams are made of: attribute types (value pools, sentence templates
per event type, question paraphrases, held-out templates and attributes), the shared retraction,
rumour and write-signal templates, and the entity name pools of the train and held-out splits.

Example:
    >>> ATTRIBUTES["city"].update[0].format(key="Alice Moreau", value="Porto")
    'Alice Moreau moved to Porto.'
"""

from __future__ import annotations

from dataclasses import dataclass

from memadapter.errors import ConfigError


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute type: its value pool, sentence templates per event type, question paraphrases.

    Templates use ``{key}`` (the entity surface form) before ``{value}``: the grounding head pairs
    a key span with the value span that follows it. ``heldout_*`` templates are reserved for the
    ``test_unseen_templates`` split; ``heldout=True`` reserves the whole attribute for
    ``test_unseen_attributes``.

    Example:
        >>> spec = ATTRIBUTES["city"]
        >>> spec.update[0].format(key="Alice Moreau", value=spec.values[0])
        'Alice Moreau moved to Lyon.'
    """

    name: str
    noun: str  # used by the shared retraction / rumour templates: "{key}'s {noun}"
    kinds: tuple[str, ...]
    values: tuple[str, ...]
    new: tuple[str, ...]
    update: tuple[str, ...]
    questions: tuple[str, ...]
    heldout_new: tuple[str, ...] = ()
    heldout_update: tuple[str, ...] = ()
    heldout_questions: tuple[str, ...] = ()
    heldout: bool = False

    def __post_init__(self) -> None:
        for field_name in ("new", "update", "heldout_new", "heldout_update"):
            for t in getattr(self, field_name):
                if not (t.count("{key}") == 1 and t.count("{value}") == 1 and t.index("{key}") < t.index("{value}")):
                    raise ConfigError(
                        f"{self.name}.{field_name}: template {t!r} needs one {{key}} before one {{value}}")
        for t in self.questions + self.heldout_questions:
            if t.count("{key}") != 1 or "{value}" in t:
                raise ConfigError(f"{self.name}.questions: template {t!r} needs exactly one {{key}} and no {{value}}")
        if len(set(self.values)) < 4:
            raise ConfigError(f"{self.name}.values: need at least 4 distinct values")


def _spec(name: str, noun: str, kinds: str, values, new, update, questions, h_new=(), h_update=(), h_q=(),
          heldout: bool = False) -> AttributeSpec:
    return AttributeSpec(name, noun, tuple(kinds.split()), tuple(values), tuple(new), tuple(update),
                         tuple(questions), tuple(h_new), tuple(h_update), tuple(h_q), heldout)


_ATTRIBUTE_LIST = [
    _spec("city", "home city", "person",
          ("Lyon", "Porto", "Graz", "Leeds", "Bergen", "Turin", "Ghent", "Malmo", "Cork", "Bilbao", "Krakow",
           "Utrecht"),
          ("{key} lives in {value}.", "{key} has a flat in {value} and lives there.", "{key} is based in {value}."),
          ("{key} moved to {value}.", "{key} now lives in {value}.", "{key} left for {value} and lives there now."),
          ("Where does {key} live now?", "Which city is {key} based in?", "What is {key}'s home city?"),
          ("{key} makes a home in {value}.", "{key} resides in {value}."),
          ("{key} has relocated to {value}.", "{key} packed up and settled in {value}."),
          ("In which town can {key} be found these days?", "Name the city {key} calls home.")),
    _spec("employer", "employer", "person",
          ("Northwind Labs", "Bluefield Bank", "Harbor Health", "Copperline Foods", "Stonebridge Media",
           "Redwood Logistics", "Alder Robotics", "Granite Insurance", "Maple Court Hotels", "Silverleaf Books"),
          ("{key} works at {value}.", "{key} has a job at {value}.", "{key} is employed by {value}."),
          ("{key} now works at {value}.", "{key} switched jobs and joined {value}.",
           "{key} left the old job for a post at {value}."),
          ("Where does {key} work now?", "Who employs {key}?", "Which company does {key} work for?"),
          ("{key} earns a salary from {value}.", "{key} draws a paycheck at {value}."),
          ("{key} was hired away by {value}.", "{key} signed on with {value} instead."),
          ("Who pays {key}'s wages at present?", "At which firm is {key} on staff?")),
    _spec("phone", "phone number", "person",
          tuple(f"555-01{n:02d}" for n in range(12, 60, 4)),
          ("{key}'s phone number is {value}.", "{key} can be reached at {value}.", "You can call {key} on {value}."),
          ("{key}'s phone number changed to {value}.", "{key} now answers calls at {value}.",
           "{key} got a new phone number, {value}."),
          ("What is {key}'s phone number?", "What number can {key} be reached at?", "How do I call {key}?"),
          ("{key} picks up the phone at {value}.", "To ring {key}, dial {value}."),
          ("{key} switched carriers and the number became {value}.", "{key}'s line was moved over to {value}."),
          ("Which digits should I dial to ring {key}?", "What's the current line for {key}?")),
    _spec("code", "access code", "project",
          ("K7-2291", "M4-8810", "T2-5536", "R9-1047", "B3-6612", "H8-3378", "P5-9023", "W1-4485", "Z6-7150",
           "D2-2964"),
          ("The access code for {key} is {value}.", "{key} uses the access code {value}.",
           "{key} is unlocked with code {value}."),
          ("The code for {key} was changed to {value}.", "{key} now uses the access code {value}.",
           "{key} got a new access code, {value}."),
          ("What is the access code for {key}?", "Which code unlocks {key}?", "What code does {key} use now?"),
          ("{key} opens only with the passcode {value}.", "Entry to {key} requires the passcode {value}."),
          ("{key} had its passcode reset to {value}.", "Security rotated the passcode of {key} to {value}."),
          ("What passcode opens {key} today?", "Tell me the current entry code of {key}.")),
    _spec("name", "public name", "project",
          ("Bluebird", "Kestrel", "Juniper", "Halcyon", "Meridian", "Lantern", "Cobalt", "Saffron", "Tundra",
           "Vesper", "Quartz", "Willow"),
          ("{key} is called {value} in public.", "Outside the team, {key} goes by the name {value}.",
           "{key} is known to customers as {value}."),
          ("{key} was renamed {value}.", "{key} is now called {value}.", "{key} got a new public name, {value}."),
          ("What is {key} called now?", "What is the public name of {key}?", "Under which name is {key} known?"),
          ("{key} is marketed under the label {value}.", "{key} carries the brand {value}."),
          ("{key} was rebranded as {value}.", "{key} now trades under the label {value}."),
          ("Which label does {key} go by these days?", "What brand name does {key} carry at present?")),
    _spec("deadline", "deadline", "project",
          ("June 14", "July 2", "August 19", "September 5", "October 23", "November 8", "December 11",
           "January 27", "February 16", "March 30"),
          ("{key} is due on {value}.", "The deadline for {key} is {value}.", "{key} has to ship by {value}."),
          ("The deadline for {key} moved to {value}.", "{key} is now due on {value}.",
           "{key} was postponed to {value}."),
          ("When is {key} due?", "What is the deadline for {key}?", "By when must {key} ship?"),
          ("{key} must be finished no later than {value}.", "Delivery of {key} is scheduled for {value}."),
          ("{key} slipped and will land on {value}.", "Management pushed {key} back to {value}."),
          ("On what date will {key} be delivered?", "What's the finish date of {key} now?")),
    _spec("price", "price", "product",
          ("45 dollars", "60 dollars", "75 dollars", "89 dollars", "99 dollars", "120 dollars", "135 dollars",
           "150 dollars", "180 dollars", "210 dollars"),
          ("{key} costs {value}.", "{key} sells for {value}.", "The price of {key} is {value}."),
          ("{key} now costs {value}.", "The price of {key} went to {value}.", "{key} was repriced at {value}."),
          ("How much does {key} cost?", "What is the price of {key}?", "What does {key} sell for now?"),
          ("{key} retails at {value}.", "A buyer of {key} pays {value}."),
          ("{key} went on sale for {value}.", "{key} is marked at {value} after the change."),
          ("What would I pay for {key} today?", "How much is {key} going for?")),
    _spec("colour", "colour", "product",
          ("teal", "crimson", "olive green", "charcoal grey", "mustard yellow", "navy blue", "coral", "ivory",
           "plum", "sky blue"),
          ("{key} is painted {value}.", "{key} comes in {value}.", "The colour of {key} is {value}."),
          ("{key} is now painted {value}.", "{key} was repainted {value}.", "The colour of {key} changed to {value}."),
          ("What colour is {key}?", "What is the colour of {key}?", "Which colour does {key} come in now?"),
          ("{key} has a {value} finish.", "{key} is coated in {value}."),
          ("{key} got a fresh coat of {value}.", "{key} was refinished in {value}."),
          ("What shade is {key} finished in?", "Which hue does {key} have at the moment?")),
    # Held-out attribute types (test_unseen_attributes only).
    _spec("floor", "office floor", "person",
          tuple(f"floor {n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 11, 12)),
          ("{key} works on {value}.", "{key}'s office is on {value}.", "{key} sits on {value}."),
          ("{key} moved up to {value}.", "{key}'s desk was moved to {value}.", "{key} now sits on {value}."),
          ("Which floor is {key}'s office on?", "Where in the building does {key} sit?",
           "What floor does {key} work on?"), heldout=True),
    _spec("car", "car", "person",
          ("Volvo", "Toyota", "Skoda", "Mazda", "Peugeot", "Subaru", "Fiat", "Kia", "Renault", "Honda"),
          ("{key} drives a {value}.", "{key} owns a {value}.", "{key} goes to work in a {value}."),
          ("{key} sold the old car and now drives a {value}.", "{key} bought a {value} to replace the old car.",
           "{key} switched to a {value}."),
          ("What car does {key} drive?", "Which car does {key} own now?", "What does {key} drive these days?"),
          heldout=True),
    _spec("budget", "budget", "project",
          tuple(f"{n},000 dollars" for n in (20, 35, 40, 55, 70, 80, 95, 120, 150, 200)),
          ("{key} has a budget of {value}.", "{key} was given {value} to spend.", "The budget for {key} is {value}."),
          ("The budget for {key} was raised to {value}.", "{key} now has a budget of {value}.",
           "The budget of {key} was cut to {value}."),
          ("What is the budget for {key}?", "How much money does {key} have?", "How large is {key}'s budget?"),
          heldout=True),
    _spec("weight", "weight", "product",
          tuple(f"{n} kilograms" for n in (2, 3, 4, 5, 6, 8, 9, 12, 15, 18)),
          ("{key} weighs {value}.", "{key} has a weight of {value}.", "On the scale, {key} shows {value}."),
          ("{key} now weighs {value}.", "After the redesign, {key} weighs {value}.",
           "The weight of {key} dropped to {value}."),
          ("How much does {key} weigh?", "What is the weight of {key}?", "How heavy is {key}?"), heldout=True),
]
ATTRIBUTES: dict[str, AttributeSpec] = {a.name: a for a in _ATTRIBUTE_LIST}

# Shared across attributes; index 0 = train templates, 1 = held-out templates (test_unseen_templates).
RETRACT_TEMPLATES: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("{key}'s {noun} is no longer known.", "Please forget {key}'s {noun}; it is no longer valid.",
     "The record of {key}'s {noun} was withdrawn."),
    ("Nobody can confirm {key}'s {noun} any more.", "{key}'s {noun} has been struck from the files."),
)
# Rumours and hypotheticals: they name an entity and a value but state no fact (event "irrelevant").
NOISE_TEMPLATES: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("Someone once guessed that {key}'s {noun} was {value}, but nobody believed it.",
     "For a while people joked that {key}'s {noun} would be {value}.",
     "A rumour that {key}'s {noun} is {value} turned out to be false."),
    ("There was idle talk that {key}'s {noun} could be {value}, though it never was.",
     "It was wrongly reported that {key}'s {noun} is {value}."),
)
# Explicit write signals: a marker, a timestamp or a revision number before the sentence.
SIGNAL_PREFIXES: dict[str, tuple[str, ...]] = {
    "new": ("Note:", "Record:", "[{timestamp}]", "On {date},"),
    "update": ("Update:", "Correction:", "As of {date},", "Revision {version}:", "[{timestamp}]"),
    "retract": ("Correction:", "Update:", "[{timestamp}]"),
}

FIRST_NAME_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("Alice", "Alicia"), ("Daniel", "Daniela"), ("Marc", "Marco"), ("Julia", "Julian"),
              ("Paul", "Paula"), ("Erik", "Erika"), ("Simon", "Simone"), ("Louis", "Louise"),
              ("Carla", "Carlo"), ("Nina", "Nino"), ("Robert", "Roberta"), ("Martin", "Martina"),
              ("Anna", "Anne"), ("Leon", "Leona"), ("Victor", "Victoria"), ("Greta", "Gert")),
    "heldout": (("Oskar", "Oskana"), ("Ingrid", "Ingmar"), ("Tomas", "Tamsin"), ("Yusuf", "Yusra"),
                ("Priya", "Priyam"), ("Kenji", "Kenta"), ("Ewa", "Ewan"), ("Rafael", "Rafaela")),
}
LAST_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("Moreau", "Keller", "Brandt", "Costa", "Novak", "Hughes", "Lindqvist", "Ferreira", "Dubois",
              "Walsh", "Kowalski", "Berger", "Russo", "Hansen", "Okafor", "Martel"),
    "heldout": ("Achterberg", "Szabo", "Nakamura", "Oyelaran", "Quintero", "Haugland", "Vasquez", "Templeton"),
}
PROJECT_WORDS: dict[str, tuple[str, ...]] = {
    "train": ("Falcon", "Orchid", "Basalt", "Beacon", "Atlas", "Comet", "Ember", "Glacier", "Mosaic", "Pioneer",
              "Raven", "Summit"),
    "heldout": ("Basilisk", "Dunmore", "Fjord", "Ironwood", "Nimbus", "Zephyr"),
}
PRODUCT_BRANDS: dict[str, tuple[str, ...]] = {
    "train": ("Orion", "Nova", "Acme", "Helix", "Lumen", "Vega", "Polar", "Terra"),
    "heldout": ("Brisa", "Kairo", "Olvan", "Quill"),
}
PRODUCT_TYPES: tuple[str, ...] = ("kettle", "lamp", "bicycle", "blender", "backpack", "printer", "heater", "speaker")
