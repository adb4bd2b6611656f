def translate_with_review(content, target_languages=["spanish", "french", "german"]):
    """Translate content with quality review."""
    
    translations = {}
    
    for lang in target_languages:
        # Translate
        translate_agent = requests.post(f"{BASE_URL}/spawn", json={
            "model": "sonnet",
            "task": f"Translate this content to {lang}. Maintain tone and formatting:\n\n{content}",
            "priority": "normal"
        }).json()
        
        translated = poll_for_completion(translate_agent["agent_id"])
        
        # Quality review
        review_agent = requests.post(f"{BASE_URL}/spawn", json={
            "model": "opus",
            "task": f"Review this {lang} translation for accuracy, naturalness, and tone. Rate 1-10 and note any issues.\n\nOriginal: {content}\n\nTranslation: {translated['result']}",
            "priority": "normal"
        }).json()
        
        review = poll_for_completion(review_agent["agent_id"])
        
        # Revise if needed
        if "8" not in review["result"] and "9" not in review["result"] and "10" not in review["result"]:
            revise_agent = requests.post(f"{BASE_URL}/spawn", json={
                "model": "sonnet",
                "task": f"Improve this {lang} translation based on feedback:\n\nTranslation: {translated['result']}\n\nFeedback: {review['result']}",
                "priority": "normal"
            }).json()
            
            revised = poll_for_completion(revise_agent["agent_id"])
            final = revised["result"]
        else:
            final = translated["result"]
        
        translations[lang] = {
            "translation": final,
            "quality_score": review["result"],
            "cost": translated.get("cost", 0) + review.get("cost", 0)
        }
    
    return translations
