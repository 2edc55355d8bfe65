// Fallback menu shipped with the app (used offline before the API answers).
module.exports = {
  "version": 42,
  "items": [
    {
      "id": "sku-1000",
      "name": "Americano",
      "category": "drinks",
      "price": 2200,
      "kcal": 425,
      "description": "Americano, made to order with beans roasted in-house every Tuesday. Americano, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "oat milk",
          "whipped cream",
          "less sugar"
        ]
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1001",
      "name": "Latte",
      "category": "drinks",
      "price": 3600,
      "kcal": 150,
      "description": "Latte, made to order with beans roasted in-house every Tuesday. Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "whipped cream",
          "caramel",
          "extra shot"
        ]
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1002",
      "name": "Flat White",
      "category": "drinks",
      "price": 2800,
      "kcal": 297,
      "description": "Flat White, made to order with beans roasted in-house every Tuesday. Flat White, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "caramel",
          "oat milk",
          "less sugar"
        ]
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1003",
      "name": "Cappuccino",
      "category": "drinks",
      "price": 1800,
      "kcal": 378,
      "description": "Cappuccino, made to order with beans roasted in-house every Tuesday. Cappuccino, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "oat milk",
          "extra shot",
          "less sugar"
        ]
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1004",
      "name": "Mocha",
      "category": "drinks",
      "price": 2800,
      "kcal": 229,
      "description": "Mocha, made to order with beans roasted in-house every Tuesday. Mocha, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "oat milk",
          "no ice",
          "less sugar"
        ]
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1005",
      "name": "Cortado",
      "category": "drinks",
      "price": 3200,
      "kcal": 260,
      "description": "Cortado, made to order with beans roasted in-house every Tuesday. Cortado, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "hazelnut",
          "oat milk",
          "no ice"
        ]
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1006",
      "name": "Macchiato",
      "category": "drinks",
      "price": 3200,
      "kcal": 210,
      "description": "Macchiato, made to order with beans roasted in-house every Tuesday. Macchiato, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "vanilla",
          "caramel",
          "hazelnut"
        ]
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1007",
      "name": "Cold Brew",
      "category": "drinks",
      "price": 3600,
      "kcal": 245,
      "description": "Cold Brew, made to order with beans roasted in-house every Tuesday. Cold Brew, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "caramel",
          "no ice",
          "vanilla"
        ]
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1008",
      "name": "Nitro Cold Brew",
      "category": "drinks",
      "price": 3200,
      "kcal": 424,
      "description": "Nitro Cold Brew, made to order with beans roasted in-house every Tuesday. Nitro Cold Brew, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "hazelnut",
          "vanilla",
          "no ice"
        ]
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1009",
      "name": "Oat Latte",
      "category": "drinks",
      "price": 3200,
      "kcal": 151,
      "description": "Oat Latte, made to order with beans roasted in-house every Tuesday. Oat Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "less sugar",
          "oat milk",
          "vanilla"
        ]
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1010",
      "name": "Matcha Latte",
      "category": "drinks",
      "price": 1800,
      "kcal": 157,
      "description": "Matcha Latte, made to order with beans roasted in-house every Tuesday. Matcha Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "oat milk",
          "vanilla",
          "hazelnut"
        ]
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1011",
      "name": "Chai Latte",
      "category": "drinks",
      "price": 2800,
      "kcal": 480,
      "description": "Chai Latte, made to order with beans roasted in-house every Tuesday. Chai Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "no ice",
          "caramel",
          "whipped cream"
        ]
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1012",
      "name": "Hot Chocolate",
      "category": "drinks",
      "price": 3600,
      "kcal": 391,
      "description": "Hot Chocolate, made to order with beans roasted in-house every Tuesday. Hot Chocolate, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "no ice",
          "extra shot",
          "vanilla"
        ]
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1013",
      "name": "Affogato",
      "category": "drinks",
      "price": 2200,
      "kcal": 487,
      "description": "Affogato, made to order with beans roasted in-house every Tuesday. Affogato, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "vanilla",
          "oat milk",
          "extra shot"
        ]
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1014",
      "name": "Espresso Tonic",
      "category": "drinks",
      "price": 2800,
      "kcal": 408,
      "description": "Espresso Tonic, made to order with beans roasted in-house every Tuesday. Espresso Tonic, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "no ice",
          "extra shot",
          "less sugar"
        ]
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1015",
      "name": "Honey Oat Latte",
      "category": "drinks",
      "price": 1800,
      "kcal": 293,
      "description": "Honey Oat Latte, made to order with beans roasted in-house every Tuesday. Honey Oat Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "vanilla",
          "hazelnut",
          "caramel"
        ]
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1016",
      "name": "Caramel Macchiato",
      "category": "drinks",
      "price": 2800,
      "kcal": 329,
      "description": "Caramel Macchiato, made to order with beans roasted in-house every Tuesday. Caramel Macchiato, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "extra shot",
          "caramel",
          "oat milk"
        ]
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1017",
      "name": "Vanilla Latte",
      "category": "drinks",
      "price": 2800,
      "kcal": 467,
      "description": "Vanilla Latte, made to order with beans roasted in-house every Tuesday. Vanilla Latte, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "no ice",
          "hazelnut",
          "oat milk"
        ]
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1018",
      "name": "Hazelnut Mocha",
      "category": "drinks",
      "price": 1800,
      "kcal": 331,
      "description": "Hazelnut Mocha, made to order with beans roasted in-house every Tuesday. Hazelnut Mocha, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "caramel",
          "hazelnut",
          "vanilla"
        ]
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1019",
      "name": "Dirty Chai",
      "category": "drinks",
      "price": 2800,
      "kcal": 165,
      "description": "Dirty Chai, made to order with beans roasted in-house every Tuesday. Dirty Chai, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [
          "S",
          "M",
          "L"
        ],
        "extras": [
          "vanilla",
          "less sugar",
          "caramel"
        ]
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1020",
      "name": "Butter Croissant",
      "category": "food",
      "price": 3600,
      "kcal": 245,
      "description": "Butter Croissant, made to order with beans roasted in-house every Tuesday. Butter Croissant, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1021",
      "name": "Almond Croissant",
      "category": "food",
      "price": 1800,
      "kcal": 214,
      "description": "Almond Croissant, made to order with beans roasted in-house every Tuesday. Almond Croissant, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1022",
      "name": "Pain au Chocolat",
      "category": "food",
      "price": 2800,
      "kcal": 277,
      "description": "Pain au Chocolat, made to order with beans roasted in-house every Tuesday. Pain au Chocolat, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1023",
      "name": "Cinnamon Roll",
      "category": "food",
      "price": 2600,
      "kcal": 336,
      "description": "Cinnamon Roll, made to order with beans roasted in-house every Tuesday. Cinnamon Roll, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1024",
      "name": "Banana Bread",
      "category": "food",
      "price": 3600,
      "kcal": 246,
      "description": "Banana Bread, made to order with beans roasted in-house every Tuesday. Banana Bread, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1025",
      "name": "Blueberry Muffin",
      "category": "food",
      "price": 3200,
      "kcal": 125,
      "description": "Blueberry Muffin, made to order with beans roasted in-house every Tuesday. Blueberry Muffin, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1026",
      "name": "Ham & Cheese Toastie",
      "category": "food",
      "price": 1800,
      "kcal": 125,
      "description": "Ham & Cheese Toastie, made to order with beans roasted in-house every Tuesday. Ham & Cheese Toastie, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1027",
      "name": "Avocado Toast",
      "category": "food",
      "price": 2200,
      "kcal": 510,
      "description": "Avocado Toast, made to order with beans roasted in-house every Tuesday. Avocado Toast, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1028",
      "name": "Granola Bowl",
      "category": "food",
      "price": 3200,
      "kcal": 220,
      "description": "Granola Bowl, made to order with beans roasted in-house every Tuesday. Granola Bowl, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1029",
      "name": "Carrot Cake",
      "category": "food",
      "price": 2200,
      "kcal": 431,
      "description": "Carrot Cake, made to order with beans roasted in-house every Tuesday. Carrot Cake, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1030",
      "name": "Lemon Drizzle",
      "category": "food",
      "price": 2800,
      "kcal": 363,
      "description": "Lemon Drizzle, made to order with beans roasted in-house every Tuesday. Lemon Drizzle, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/2.png"
    },
    {
      "id": "sku-1031",
      "name": "Chocolate Brownie",
      "category": "food",
      "price": 3200,
      "kcal": 118,
      "description": "Chocolate Brownie, made to order with beans roasted in-house every Tuesday. Chocolate Brownie, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/3.png"
    },
    {
      "id": "sku-1032",
      "name": "Egg Salad Sandwich",
      "category": "food",
      "price": 2200,
      "kcal": 97,
      "description": "Egg Salad Sandwich, made to order with beans roasted in-house every Tuesday. Egg Salad Sandwich, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/0.png"
    },
    {
      "id": "sku-1033",
      "name": "Chicken Wrap",
      "category": "food",
      "price": 2800,
      "kcal": 111,
      "description": "Chicken Wrap, made to order with beans roasted in-house every Tuesday. Chicken Wrap, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/1.png"
    },
    {
      "id": "sku-1034",
      "name": "Quiche Lorraine",
      "category": "food",
      "price": 1800,
      "kcal": 252,
      "description": "Quiche Lorraine, made to order with beans roasted in-house every Tuesday. Quiche Lorraine, made to order with beans roasted in-house every Tuesday. ",
      "options": {
        "sizes": [],
        "extras": []
      },
      "image": "images/menu/2.png"
    }
  ]
};
