"""Survey and file sources: CSV exports today; Typeform, SurveyMonkey and Google Forms beside it."""
